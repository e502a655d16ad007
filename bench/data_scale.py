#!/usr/bin/env python
"""How the cost of an image folder grows with its size (issue 25).

For each size (default 10,000 and 50,000 files) the bench writes a synthetic folder: 10 classes,
RGB, half JPEG and half PNG, of mixed sizes (72 to 120 pixels a side; smooth random shapes plus
noise, so the files compress like photos rather than like noise), converted by mnistkit to
96x96x3. Then, each on a fresh cache:

* decode throughput (files/s) with 1 and with 2 decoding processes (``load_image_folder``),
  each twice in the order 1 2 2 1 (the median of each), with the folder's files held in the
  page cache (:class:`Resident`), and the machine's CPU seconds (user, system, idle, iowait)
  during each;
* the cache's size on disk (the uncompressed ``.rows`` data file);
* the start of a run: loading the folder with a fresh cache (decode + cache) against loading it
  again from the cache (the in-process time to the tensors, page cache warm);
* adding 1 % new files: how many files are decoded then, and how long the start takes;
* training a small MLP through ``python -m mnistkit run`` with ``data.cache: mmap`` (and
  ``memory`` for comparison): training seconds per 1,000 images over all the run's epochs
  (metrics.csv) and the peak RSS of that process (``os.wait4``'s rusage). Every run trains on
  about as many images: the largest folder one epoch, a folder 1/k its size k epochs;
* with ``--cap-mb N`` (root, a writable cgroup file system) and a cache larger than N MB: one
  ``mmap`` and one ``memory`` epoch, each in a memory cgroup the bench makes with that limit
  (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), the cache evicted from the page
  cache first so that the run's reads are charged to its cgroup: exit status, peak RSS, the
  cgroup's peak usage, how often it hit the limit, OOM kills;
* the 1-minute load average before each measurement (the machine is shared).

Training runs come after every size is prepared, alternated over sizes and modes in each round
(10k mmap, 10k memory, 50k mmap, ..., then the reverse; ``--repeats`` rounds), so that a change
in the machine's load hits every size alike; ``--modes mmap`` leaves out the in-memory runs
(which at 200k files take 14 GB and push the mapped file out of the page cache).
``--decode-workers 2`` decodes once, with 2 processes only.

    python bench/data_scale.py                       # 10k and 50k
    python bench/data_scale.py --sizes 2000          # smoke run (about a minute)
    python bench/data_scale.py --sizes 10000 --json out.json
    python bench/data_scale.py --sizes 50000 --cap-mb 900   # also under a 900 MB memory cap

Results and the machine they came from: docs/performance.md ("Image folders larger than memory").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnistkit.data.images import load_image_folder  # noqa: E402

CLASSES = 10
SIDE = 96

RECIPE = """\
name: data-scale
seed: 0
data:
  dataset: image_folder
  image: {{channels: 3, size: [{side}, {side}]}}
  batch_size: 128
  cache: {cache}
model: {{hidden: [64]}}
optimizer: {{name: sgd, lr: 0.01}}
epochs: {epochs}
train: {{threads: {threads}, plots: false, checkpoint: false, compile: false}}
"""


def make_folder(root: Path, n: int, seed: int = 0, start: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = []
    for i in range(start, start + n):
        side = int(rng.integers(72, 121))
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(small, "RGB").resize((side, side), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (side, side, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        folder = root / f"c{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.{'png' if i % 2 else 'jpg'}"
        img.save(path, "PNG", compress_level=1) if i % 2 else img.save(path, "JPEG", quality=90)
        written.append(path)
    return written


#: Run by each :class:`Resident` helper: map every file named on stdin's first line (a file of
#: NUL-separated paths) with MAP_POPULATE, close it, say "ready", hold the maps until stdin closes.
_HOLD = r"""
import ctypes, ctypes.util, os, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
PROT_READ, MAP_SHARED, MAP_POPULATE = 1, 1, 0x8000
names = open(sys.stdin.readline().strip(), "rb").read().split(b"\0")
for name in names:
    fd = os.open(name, os.O_RDONLY)
    size = os.fstat(fd).st_size
    got = libc.mmap(None, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0) if size else 0
    if got in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {name!r}")
    os.close(fd)
print("ready", flush=True)
sys.stdin.read()
"""


class Resident:
    """Files held in the page cache while the bench measures: helper processes map them (and fault
    them in). This VM's host pages out file pages nobody touched for about a minute (a DAMON
    ``pageout`` scheme on unmapped pages), so a 200k folder read once before a 2-minute decode
    is partly read from the disk again by the end of it, and the variant measured later pays
    more for the disk. Mapped pages are left alone: every variant reads from memory."""

    PER_HELPER = 60_000  # under vm.max_map_count (65,530 by default)

    def __init__(self, files: list[Path], work: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        t0 = time.perf_counter()
        for k in range(0, len(files), self.PER_HELPER):
            names = work / f"resident-{os.getpid()}-{k}.lst"
            names.write_bytes(b"\0".join(bytes(f) for f in files[k : k + self.PER_HELPER]))
            proc = subprocess.Popen([sys.executable, "-c", _HOLD], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{names}\n")
            proc.stdin.flush()
            self.procs.append(proc)
            if proc.stdout.readline().strip() != "ready":
                self.release()
                raise SystemExit(f"could not hold {names}'s files in memory")
            names.unlink()
        self.seconds = time.perf_counter() - t0

    def release(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
        self.procs = []


def cpu_times() -> dict[str, float]:
    """The machine's CPU seconds so far (/proc/stat): user, system, idle, waiting for the disk."""
    f = [int(x) / os.sysconf("SC_CLK_TCK") for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return {"user": f[0] + f[1], "system": f[2] + f[5] + f[6], "idle": f[3], "iowait": f[4]}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def timed_load(root: Path, cache: Path, workers: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    data = load_image_folder(root, 3, (SIDE, SIDE), cache, False, workers=workers, cache_mode="mmap")
    return time.perf_counter() - t0, data


def train_once(
    root: Path,
    work: Path,
    cache_env: Path,
    mode: str,
    threads: int,
    cgroup: MemoryCap | None = None,
    epochs: int = 1,
) -> dict[str, Any]:
    recipe = work / f"{mode}.yaml"
    recipe.write_text(RECIPE.format(side=SIDE, cache=mode, threads=threads, epochs=epochs))
    out = work / f"run-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "MNISTKIT_CACHE": str(cache_env), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "mnistkit", "run", str(recipe), "--data-dir", str(root)]
    argv += ["--out", str(out), "--progress", "plain"]
    before = load_avg()
    t0 = time.perf_counter()
    enter = cgroup.enter if cgroup is not None else None
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=enter)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if cgroup is not None and proc.returncode != 0:
        rss = round(usage.ru_maxrss / 1024, 1)
        return {"exit": proc.returncode, "peak_rss_mb": rss, "tail": output[-300:]}
    if proc.returncode != 0:
        raise SystemExit(f"training run failed:\n{output}")
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    info = json.loads((out / "data.json").read_text())
    n_train = info["samples"]["train"]
    epoch_s = [float(r["seconds"]) for r in rows]
    return {
        "epochs": len(epoch_s),
        "epoch_s": round(sorted(epoch_s)[len(epoch_s) // 2], 2),  # the median epoch
        "epoch_s_per_1k": round(sum(epoch_s) / (n_train * len(epoch_s)) * 1000, 3),  # all epochs
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "wall_s": round(wall, 1),
        "load_before": before,
    }


class MemoryCap:
    """A memory cgroup the bench makes (and removes) under its own: cgroup v2's ``memory.max``,
    or v1's ``memory.limit_in_bytes``. Needs root and a writable cgroup file system."""

    def __init__(self, limit: int) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        if v2:
            own = Path("/proc/self/cgroup").read_text().split("\n")[0].split(":", 2)[2]
            self.path = Path("/sys/fs/cgroup") / own.lstrip("/") / f"mnistkit-bench-{os.getpid()}"
        else:
            line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in x)
            own = line.split(":", 2)[2]
            self.path = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"mnistkit-bench-{os.getpid()}"
        self.v2 = v2
        self.path.mkdir()
        (self.path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
        if v2 and (self.path / "memory.swap.max").exists():
            (self.path / "memory.swap.max").write_text("0")
        self.limit = limit

    def enter(self) -> None:  # in the child, before exec
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict[str, Any]:
        if self.v2:
            events = dict(x.split() for x in (self.path / "memory.events").read_text().splitlines())
            peak = self.path / "memory.peak"
            return {
                "cgroup_peak_mb": round(int(peak.read_text()) / 2**20, 1) if peak.exists() else None,
                "limit_hits": int(events.get("max", 0)),
                "oom_kills": int(events.get("oom_kill", 0)),
            }
        oom = dict(x.split() for x in (self.path / "memory.oom_control").read_text().splitlines())
        return {
            "cgroup_peak_mb": round(int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20, 1),
            "limit_hits": int((self.path / "memory.failcnt").read_text()),
            "oom_kills": int(oom.get("oom_kill", 0)),
        }

    def remove(self) -> None:
        self.path.rmdir()


def drop_from_page_cache(path: Path) -> None:
    """Evict a file's pages from the page cache, so that the next reader charges them to its own
    memory cgroup (a page is charged to whoever read it first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def capped(root: Path, work: Path, cache: Path, threads: int, cap_mb: int) -> dict[str, Any]:
    """One mmap epoch and one memory epoch, each in a fresh memory cgroup capped below the
    cache's size, the cache evicted from the page cache first."""
    (npy,) = cache.glob("*.rows")
    res: dict[str, Any] = {"cap_mb": cap_mb, "cache_mb": round(npy.stat().st_size / 2**20, 1)}
    for mode in ("mmap", "memory"):
        drop_from_page_cache(npy)
        cgroup = MemoryCap(cap_mb << 20)
        try:
            got = train_once(root, work, cache.parent, mode, threads, cgroup)
            got.update(cgroup.stats())
        finally:
            cgroup.remove()
        got.setdefault("exit", 0)
        res[mode] = got
    return res


def prepare_size(n: int, base: Path, decode_workers: list[int]) -> dict[str, Any]:
    """Folder, decoding (fresh caches), cache size, cached start, adding 1 % of new files."""
    root = base / f"folder-{n}"
    if not root.is_dir():
        t0 = time.perf_counter()
        make_folder(root, n)
        print(f"[{n}] wrote {n:,} files in {time.perf_counter() - t0:.0f} s", flush=True)
    # The folder held in memory (see Resident), then each process count decoded afresh twice,
    # in the order 1 2 2 1 (a drift of the machine's load hits both alike); the median of each.
    files = sorted(f for f in root.rglob("*") if f.is_file())
    hold = Resident(files, base)
    files_mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"[{n}] held the folder in memory: {hold.seconds:.1f} s", flush=True)
    res: dict[str, Any] = {"files": n, "folder_mb": round(files_mb, 1)}
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in decode_workers}
    try:
        for workers in decode_workers + decode_workers[::-1]:
            cache = base / f"cache-{n}-w{workers}" / "images"
            shutil.rmtree(cache.parent, ignore_errors=True)
            before, cpu0 = load_avg(), cpu_times()
            seconds, data = timed_load(root, cache, workers)
            cpu = {k: round(v - cpu0[k], 1) for k, v in cpu_times().items()}
            runs[workers].append({"seconds": round(seconds, 1), "files_per_s": round(n / seconds, 1),
                                  "load_before": before, "machine_cpu_s": cpu})  # fmt: skip
            print(f"[{n}] {workers} worker(s): {seconds:.1f} s, {n / seconds:,.0f} files/s, "
                  f"load {before}, machine CPU s {cpu}", flush=True)  # fmt: skip
            del data
    finally:
        hold.release()
    for workers, got in runs.items():
        rates = sorted(g["files_per_s"] for g in got)
        median = (rates[(len(rates) - 1) // 2] + rates[len(rates) // 2]) / 2
        res[f"decode_w{workers}"] = {"files_per_s": round(median, 1), "runs": got}
    if "decode_w1" in res and "decode_w2" in res:
        res["speedup_2_over_1"] = round(res["decode_w2"]["files_per_s"] / res["decode_w1"]["files_per_s"], 2)
    last = decode_workers[-1]
    for other in decode_workers[:-1]:  # keep one cache: the training runs' (disk, page cache)
        shutil.rmtree(base / f"cache-{n}-w{other}", ignore_errors=True)
    cache = base / f"cache-{n}-w{last}" / "images"
    (rows,) = cache.glob("*.rows")
    res["cache_mb"] = round(rows.stat().st_size / 2**20, 1)
    res["first_start_s"] = runs[last][-1]["seconds"]
    starts = []
    for _ in range(3):
        before = load_avg()
        seconds, data = timed_load(root, cache, 2)
        assert "loaded from cache" in data.source, data.source
        starts.append({"seconds": round(seconds, 2), "load_before": before})
        del data
    res["cached_start"] = starts
    res["cached_start_s"] = sorted(s["seconds"] for s in starts)[1]
    print(
        f"[{n}] cache {res['cache_mb']} MB, cached start {res['cached_start_s']:.2f} s {starts}", flush=True
    )
    # Adding 1 % new files: only those are decoded, and their rows appended to the data file.
    size_before = rows.stat().st_size
    added = make_folder(root, max(1, n // 100), seed=1, start=n)
    before = load_avg()
    seconds, data = timed_load(root, cache, 2)
    m = re.search(r"(\d+) decoded, (\d+) reused", data.source)
    assert m is not None, data.source
    (grown,) = cache.glob("*.rows")
    res["add_1pct"] = {
        "added": len(added),
        "decoded": int(m[1]),
        "reused": int(m[2]),
        "seconds": round(seconds, 2),
        "same_data_file": grown == rows,
        "data_file_grew_mb": round((grown.stat().st_size - size_before) / 2**20, 1),
        "load_before": before,
    }
    print(f"[{n}] +{len(added)} files: {res['add_1pct']}", flush=True)
    del data
    for f in added:
        f.unlink()
    return res


def read_cost(sizes: list[int], base: Path, workers: int, rounds: int = 7) -> dict[int, dict[str, Any]]:
    """The part of an epoch that depends on the data's size, alone: reading 200 batches of 128
    random rows of each data file (as a training batch does, ``DataFile.read``), the sizes
    alternated, the order reversed every other round. Milliseconds per batch."""
    from mnistkit.data.mapped import DataFile

    files = {}
    for n in sizes:
        folder = base / f"cache-{n}-w{workers}" / "images"
        index = json.loads(next(folder.glob("*.json")).read_text())
        files[n] = DataFile(folder / index["data"], index["dtype"], tuple(index["shape"]), index["rows"])
    rng = np.random.default_rng(0)
    got: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            t0 = time.perf_counter()
            for _ in range(200):
                files[n].read(rng.integers(0, files[n].rows, 128))
            got[n].append(round((time.perf_counter() - t0) / 200 * 1000, 3))
    out = {n: {"median": sorted(v)[len(v) // 2], "rounds": v} for n, v in got.items()}
    print(f"reading 128 random rows, ms per batch: {out}", flush=True)
    return out


def measure(
    sizes: list[int],
    base: Path,
    threads: int,
    cap_mb: int | None,
    repeats: int,
    modes: list[str],
    decode_workers: list[int],
    train_only: bool = False,
) -> list[dict[str, Any]]:
    if train_only:  # folders and caches of an earlier --keep run: the training epochs only
        results: dict[int, dict[str, Any]] = {n: {"files": n} for n in sizes}
    else:
        # One small decode first, not timed: the first one in a process also pays for imports
        # and Pillow's plugins, which would land on whichever variant came first.
        warmup = base / "warmup"
        if not warmup.is_dir():
            make_folder(warmup, 64)
        timed_load(warmup, base / "cache-warmup" / "images", 1)
        shutil.rmtree(base / "cache-warmup")
        results = {n: prepare_size(n, base, decode_workers) for n in sizes}
    # Training epochs, alternated over sizes and modes in each round (the order reversed every
    # other round): a change of the machine's load hits every size alike.
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {(n, m): [] for n in sizes for m in modes}
    # Equal work per run: a smaller folder trains for more epochs (10k files: 20 epochs beside
    # 200k's one), so each run lasts about as long and a burst of the machine's other load is
    # as likely to land in any size's run; one 2-second epoch at 10k would ride on one burst.
    epochs = {n: max(1, round(max(sizes) / n)) for n in sizes}
    # Every data file held in memory (see Resident): the epochs measure reading from the page
    # cache, as on a machine that keeps what it read; the capped runs below measure the disk.
    data_files = [f for n in sizes for f in (base / f"cache-{n}-w{decode_workers[-1]}").rglob("*.rows")]
    hold = Resident(data_files, base)
    print(f"held the data files in memory: {hold.seconds:.1f} s", flush=True)
    try:
        for r in range(repeats):
            order = [(n, m) for n in sizes for m in modes]
            for n, mode in order if r % 2 == 0 else order[::-1]:
                work = base / f"work-{n}"
                work.mkdir(exist_ok=True)
                cache = base / f"cache-{n}-w{decode_workers[-1]}"
                got = train_once(base / f"folder-{n}", work, cache, mode, threads, epochs=epochs[n])
                runs[(n, mode)].append(got)
                print(f"[{n}] round {r + 1} train ({mode}): {got}", flush=True)
        read_ms = read_cost(sizes, base, decode_workers[-1])
    finally:
        hold.release()
    for n, ms in read_ms.items():
        results[n]["read_128_rows_ms"] = ms
    for (n, mode), got in runs.items():
        if not got:  # --repeats 0: decoding and starts only
            continue
        per_1k = sorted(g["epoch_s_per_1k"] for g in got)
        results[n][f"train_{mode}"] = {
            "epoch_s_per_1k_median": per_1k[len(per_1k) // 2],
            "epoch_s_per_1k": [g["epoch_s_per_1k"] for g in got],
            "peak_rss_mb_max": max(g["peak_rss_mb"] for g in got),
            "runs": got,
        }
    for n in sizes:
        res = results[n]
        cache = base / f"cache-{n}-w{decode_workers[-1]}" / "images"
        if cap_mb and res.get("cache_mb", 0) > cap_mb:  # a dataset larger than the cap
            res["capped"] = capped(base / f"folder-{n}", base / f"work-{n}", cache, threads, cap_mb)
            print(f"[{n}] under a {cap_mb} MB memory cap: {res['capped']}", flush=True)
    return [results[n] for n in sizes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training runs")
    ap.add_argument("--repeats", type=int, default=2, help="training runs per mode, alternated")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--cap-mb",
        type=int,
        default=None,
        help="also train under a memory cgroup of this many MB (root; a cap below the cache's size)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the folders and caches")
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="only the training epochs, on the folders and caches a --dir ... --keep run left",
    )
    ap.add_argument("--modes", nargs="+", default=["mmap", "memory"], choices=["mmap", "memory"])
    ap.add_argument(
        "--decode-workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="decode each folder afresh with these process counts (the last one's cache is kept)",
    )
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="mnistkit-data-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    results = {
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "sizes": measure(
            args.sizes,
            base,
            args.threads,
            args.cap_mb,
            args.repeats,
            args.modes,
            args.decode_workers,
            args.train_only,
        ),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
