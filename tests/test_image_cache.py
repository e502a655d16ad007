"""The decoded image cache (issue 25): memory-mapped or in memory, the same batches either way,
exact resume on the mapped path, a damaged cache detected and rebuilt, an interrupted build
trusted by nobody, and only new or changed files decoded again.

Every pixel is checked against Pillow's own decoding of the files the tests write."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.data import images
from mnistkit.data.batches import (
    dataloader_batches,
    epoch_order,
    eval_batches,
    make_dataloader,
    memory_batches,
    prepare,
)
from mnistkit.data.imagecache import choose_mode
from mnistkit.data.images import load_image_folder
from mnistkit.data.mapped import Rows
from mnistkit.recipe.sections import DataSection
from mnistkit.runs.directory import RunDir
from mnistkit.training.checkpoint import load_checkpoint

CLASSES = ("ant", "bee", "cow")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    for name in ("MNISTKIT_DATA", "MNISTKIT_KILL_AT"):
        monkeypatch.delenv(name, raising=False)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(path, "PNG" if path.suffix == ".png" else "JPEG")


def make_folder(root: Path, per_class: int = 12) -> None:
    for ci, c in enumerate(CLASSES):
        for i in range(per_class):
            write_image(root / c / f"{i:02d}.{'png' if i % 2 else 'jpg'}", 100 * ci + i)


def pil(path: Path) -> np.ndarray:
    """Pillow's RGB pixels of the file as [3, H, W]: the reference, independent of mnistkit."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def load(root: Path, **kw: Any) -> Any:
    cache = Path(os.environ["MNISTKIT_CACHE"]) / "images"
    return load_image_folder(root, 3, (10, 10), cache, False, **kw)


def sample(data: Any, i: int) -> np.ndarray:
    """Sample ``i`` of the files (training split, then test) as stored, from either mode."""
    n_train = len(data.train.y)
    split, j = (data.train, i) if i < n_train else (data.test, i - n_train)
    return split.raw(np.array([j]))[0].numpy()


def check_pixels(data: Any) -> None:
    for i, f in enumerate(data.files):
        assert np.array_equal(sample(data, i), pil(f)), f


def test_mmap_serves_the_same_batches_as_memory(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    mem = load(tmp_path / "data", cache_mode="memory", seed=4)
    mapped = load(tmp_path / "data", cache_mode="mmap", seed=4)
    assert not mem.mapped and mapped.mapped
    assert mem.cache_note.startswith("memory (data.cache: memory)")
    assert mapped.cache_note.startswith("mmap (data.cache: mmap)")
    assert mapped.files == mem.files
    check_pixels(mapped)
    check_pixels(mem)
    section = DataSection(dataset="image_folder", batch_size=5)
    cpu = torch.device("cpu")
    a, b = prepare(mem, section, 4, cpu), prepare(mapped, section, 4, cpu)
    # The mapped training split is served from the file, not copied into memory.
    assert isinstance(b.train.x, Rows) and b.train.x.file is mapped.train.x.file
    for epoch in range(2):
        ga, gb = torch.Generator().manual_seed(epoch), torch.Generator().manual_seed(epoch)
        oa, ob = epoch_order(len(a.train.y), True, ga), epoch_order(len(b.train.y), True, gb)
        served = list(
            zip(memory_batches(a.train, 5, oa, False), memory_batches(b.train, 5, ob, False), strict=True)
        )
        assert len(served) == -(-len(a.train.y) // 5)
        for (xa, ya), (xb, yb) in served:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.mean == b.mean
    # The mapped test split stays raw uint8 (rows of the file) and is normalized batch by
    # batch: the same model inputs as the in-memory path's float32 split.
    assert isinstance(b.test.x, Rows) and b.test.x.dtype == np.uint8
    for (xa, ya), (xb, yb) in zip(eval_batches(a.test, 4), eval_batches(b.test, 4), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    idx = np.array([2, 0, 1])
    assert torch.equal(a.test.inputs(idx), b.test.inputs(idx))
    # val_split and limit pick row numbers out of the training split: nothing is copied, and
    # both paths hold out the same samples.
    held = DataSection(dataset="image_folder", val_split=0.25, limit=30, batch_size=5)
    ha, hb = prepare(mem, held, 4, cpu), prepare(mapped, held, 4, cpu)
    assert isinstance(hb.train.x, Rows) and isinstance(hb.val.x, Rows)
    assert len(hb.val.y) == 8 and len(hb.train.y) == 22
    for (xa, ya), (xb, yb) in zip(eval_batches(ha.val, 3), eval_batches(hb.val, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = torch.randperm(22)
    for (xa, ya), (xb, yb) in zip(
        memory_batches(ha.train, 5, order, False), memory_batches(hb.train, 5, order, False), strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # data.loader: dataloader reads the file's rows through the same order.
    loader = make_dataloader(hb.train, 5, False, 0, cpu)
    got = list(dataloader_batches(loader, order, cpu))
    want = list(memory_batches(ha.train, 5, order, False))
    assert len(got) == len(want)
    for (xa, ya), (xb, yb) in zip(want, got, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_auto_keeps_in_memory_what_takes_at_most_a_quarter_of_available_memory() -> None:
    assert choose_mode("auto", 250, 1000)[0] == "memory"
    assert choose_mode("auto", 251, 1000)[0] == "mmap"
    assert choose_mode("auto", 10**12, None)[0] == "memory"
    assert choose_mode("mmap", 1, 10**12) == ("mmap", "data.cache: mmap")


RECIPE = """\
name: cached
seed: 2
data:
  dataset: image_folder
  image: {{channels: 3, size: [10, 10]}}
  batch_size: 4
  cache: {cache}
model: {{hidden: [16], dropout: 0.1}}
optimizer: {{name: adam, lr: 0.003}}
epochs: 2
train: {{threads: 1, plots: false, progress: none}}
"""


def run(tmp_path: Path, cache: str, out: str, *args: str) -> Any:
    recipe = tmp_path / f"{cache}.yaml"
    recipe.write_text(RECIPE.format(cache=cache))
    argv = ["run", str(recipe), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / out)]
    return CliRunner().invoke(app, [*argv, "--progress", "plain", *args])


def metrics(run: Path) -> list[dict[str, Any]]:
    """metrics.csv without its timing columns (exact floats)."""
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    return [{k: row[k] for k in keys} for row in RunDir(run).read_metrics()]


def test_mmap_run_resumed_after_ctrl_c_matches_an_uninterrupted_memory_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path / "data", per_class=8)
    ref = run(tmp_path, "memory", "ref")
    assert ref.exit_code == 0, ref.output
    assert "memory (data.cache: memory)" in ref.output
    assert re.search(r"decoding images: 24/24 in [\d.]+ s, [\d,]+ files/s", ref.output), ref.output
    monkeypatch.setenv("MNISTKIT_KILL_AT", "2:3:INT")  # a Ctrl-C in epoch 2, step 3
    first = run(tmp_path, "mmap", "mm")
    assert "mmap (data.cache: mmap)" in first.output
    assert len((tmp_path / "mm/metrics.csv").read_text().splitlines()) == 2, first.output
    monkeypatch.delenv("MNISTKIT_KILL_AT")
    res = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "mm"), "--progress", "plain"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "mmap (data.cache: mmap)" in res.output
    assert metrics(tmp_path / "mm") == metrics(tmp_path / "ref")
    want, got = load_checkpoint(tmp_path / "ref/last.pt"), load_checkpoint(tmp_path / "mm/last.pt")
    for key, tensor in want["model"].items():
        assert torch.equal(got["model"][key], tensor), key


def cache_files(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "cache/images"
    (index,) = folder.glob("*.json")
    (data,) = folder.glob("*.rows")
    return index, data


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "index", "table"])
def test_a_damaged_cache_is_detected_and_rebuilt_with_a_message(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path / "data", per_class=4)
    load(tmp_path / "data", cache_mode="mmap")
    index, data = cache_files(tmp_path)
    if damage == "truncate":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size - 7)
    elif damage == "overwrite":  # same size, bytes changed in place
        with open(data, "r+b") as f:
            f.seek(data.stat().st_size // 2)
            f.write(b"\xff\x00\xff")
    elif damage == "index":
        index.write_text(index.read_text()[:-20])
    else:  # the table of files: bytes changed in place (the zip's CRC no longer matches)
        table = index.parent / json.loads(index.read_text())["table"]
        blob = bytearray(table.read_bytes())
        blob[len(blob) // 3] ^= 0xFF
        table.write_bytes(bytes(blob))
    again = load(tmp_path / "data", cache_mode="mmap")
    why = {
        "truncate": "truncated",
        "overwrite": "checksum",
        "index": "unreadable index",
        "table": "unreadable table",
    }[damage]
    assert why in again.cache_note and "decoding again" in again.cache_note
    assert any(why in r.getMessage() for r in caplog.records)
    assert "12 decoded, 0 reused" in again.source
    check_pixels(again)
    assert "loaded from cache" in load(tmp_path / "data").source  # the rebuilt cache is trusted


def test_an_interrupted_build_leaves_the_previous_cache_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path / "data", per_class=4)
    load(tmp_path / "data")
    before = sorted(p.name for p in (tmp_path / "cache/images").iterdir())
    write_image(tmp_path / "data/ant/new.png", 7)

    def ctrl_c(path: Path, *a: Any) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "decode_image", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "cache/images").iterdir()) == before
    monkeypatch.undo()
    _own = tmp_path / "cache"
    monkeypatch.setenv("MNISTKIT_CACHE", str(_own))
    after = load(tmp_path / "data")
    assert "1 decoded, 12 reused" in after.source
    check_pixels(after)


def test_only_added_and_changed_files_are_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    make_folder(root, per_class=5)
    load(root, seed=1)
    calls: list[Path] = []
    real = images.decode_image

    def counting(path: Path, *a: Any) -> np.ndarray:
        calls.append(path)
        return real(path, *a)

    monkeypatch.setattr(images, "decode_image", counting)
    added, changed, removed = root / "bee/new.png", root / "cow/01.png", root / "ant/02.jpg"
    write_image(added, 555)
    write_image(changed, 556)
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    removed.unlink()
    data = load(root, seed=1)
    assert sorted(calls) == sorted([added, changed])
    assert "2 decoded, 13 reused" in data.source
    check_pixels(data)
    assert removed not in data.files and added in data.files
    index, _ = cache_files(tmp_path)
    table = index.parent / json.loads(index.read_text())["table"]
    listed = set(np.load(table)["names"].tobytes().decode().split("\0"))
    assert listed == {str(f.relative_to(root)) for f in data.files}


def test_decoding_in_two_processes_gives_the_pixels_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnistkit.data.imagecache import PARALLEL_MIN_FILES

    here: list[Path] = []  # files decoded in this process (the workers import the real one)
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda p, *a: here.append(p) or real(p, *a))

    per_class = -(-PARALLEL_MIN_FILES // len(CLASSES))
    make_folder(tmp_path / "data", per_class=per_class)
    cache = tmp_path / "cache"
    two = load_image_folder(tmp_path / "data", 3, (10, 10), cache / "two", False, workers=2)
    assert here == []
    one = load_image_folder(tmp_path / "data", 3, (10, 10), cache / "one", False, workers=1)
    assert len(here) == per_class * len(CLASSES)
    assert "by 2 processes" in two.source and " by " not in one.source
    assert f"{per_class * len(CLASSES)} decoded" in two.source
    assert two.files == one.files
    assert torch.equal(two.train.x, one.train.x) and torch.equal(two.test.x, one.test.x)  # in memory
    check_pixels(two)
    # Each file's channel sums came back from the process that decoded it, with its row: the
    # training split's mean/std are Pillow's pixels' own.
    train = np.stack([pil(f) for f in two.files[: len(two.train.y)]]).astype(np.float64) / 255
    for got in (two, one):
        assert got.mean == pytest.approx(tuple(train.mean(axis=(0, 2, 3))), rel=1e-9)
        assert got.std == pytest.approx(tuple(train.std(axis=(0, 2, 3))), rel=1e-9)


def test_decoding_progress_on_a_terminal_is_a_bar_then_one_line() -> None:
    from rich.console import Console

    from mnistkit.tracking.console import RichReporter, _rate_eta

    assert _rate_eta(50, 200, 5.0) == ", 10 files/s, about 15 s left"
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=80, highlight=False))
    for done in (0, 100, 200):
        reporter.work("decoding images", done, 200)
    text = out.getvalue()
    assert "files/s" in text and "100/200" in text  # the bar, drawn while decoding
    assert re.search(r"decoding images: 200/200 in [\d.]+ s, [\d,]+ files/s", text), text
    assert reporter.work_task is None


def test_cache_command_lists_each_decoded_folder_with_its_size(tmp_path: Path) -> None:
    make_folder(tmp_path / "data", per_class=4)
    load(tmp_path / "data")
    _, rows = cache_files(tmp_path)
    res = CliRunner().invoke(app, ["cache"])
    assert res.exit_code == 0, res.output
    (line,) = [x for x in res.output.splitlines() if "12 images 3x10x10" in x]
    assert line.split()[0].endswith(str(tmp_path / "data")[-30:])
    assert all(len(x) <= 80 for x in res.output.splitlines() if not x.startswith("cache: ")), res.output
    assert rows.stat().st_size == 12 * 3 * 10 * 10
    kb = sum(f.stat().st_size for f in rows.parent.glob("image_folder-*.*") if f.suffix != ".lock") / 1024
    assert f"{kb:.1f} KB" in line


def test_test_inputs_hash_of_a_mapped_split_is_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    import hashlib

    from mnistkit.data.batches import tensor_sha256

    make_folder(tmp_path / "data", per_class=4)
    mapped = load(tmp_path / "data", cache_mode="mmap")
    n_train = len(mapped.train.y)
    test_pixels = np.stack([pil(f) for f in mapped.files[n_train:]])
    for x, arr in ((mapped.test.x, test_pixels), (mapped.train.x[:0], test_pixels[:0])):
        want = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode() + arr.tobytes())
        assert tensor_sha256(x) == want.hexdigest()
    # the same as the in-memory split's tensor
    assert tensor_sha256(load(tmp_path / "data", cache_mode="memory").test.x) == tensor_sha256(mapped.test.x)


def mapped_kb(path: Path) -> int | None:
    """Kilobytes of ``path``'s mappings resident in this process (/proc/self/smaps): what the
    kernel counts in the process's RSS for that file; None when it is not mapped at all."""
    total, inside, found = 0, False, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path.resolve()))
            found = found or inside
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total if found else None


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's /proc/self/smaps")
def test_reading_a_mapped_dataset_whole_leaves_none_of_it_resident(tmp_path: Path) -> None:
    """An epoch, the data check, the test split's hash and an evaluation each read every row of
    the cache's file; none of it is ever mapped into the process (rows are read with preadv
    into the batch that needs them), so the process's resident set does not grow with the
    dataset. The batches are still the file's pixels."""
    from mnistkit.data.check import check_loaded
    from mnistkit.training.evaluation import evaluate

    make_folder(tmp_path / "data")
    cache = tmp_path / "cache/images"
    data = load_image_folder(tmp_path / "data", 3, (64, 48), cache, False, cache_mode="mmap")
    (rows,) = cache.glob("*.rows")
    assert rows.stat().st_size == 36 * 3 * 64 * 48
    check_pixels_sized(data, (64, 48))
    seen = [mapped_kb(rows)]
    prepared = prepare(data, DataSection(dataset="image_folder", batch_size=4), 0, torch.device("cpu"))
    seen.append(mapped_kb(rows))
    order = torch.randperm(len(prepared.train.y))
    served = torch.cat([xb for xb, _ in memory_batches(prepared.train, 4, order, False)])
    seen.append(mapped_kb(rows))
    check_loaded(data, "image", None, files=False)
    seen.append(mapped_kb(rows))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 48, 3))
    evaluate(model, prepared.test, 5)
    seen.append(mapped_kb(rows))
    assert seen == [None] * 5
    n_train = len(data.train.y)
    want = np.stack([pil_sized(f, (64, 48)) for f in data.files[:n_train]])
    assert np.array_equal(served.numpy(), want[order.numpy()])


def pil_sized(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR))
    return rgb.transpose(2, 0, 1)


def check_pixels_sized(data: Any, size: tuple[int, int]) -> None:
    for i, f in enumerate(data.files):
        assert np.array_equal(sample(data, i), pil_sized(f, size)), f


_DECODE_IMAGE = images.decode_image


def stop_after(n: int, calls: list[Path]) -> Any:
    """images.decode_image as a Ctrl-C after ``n`` files would leave it: the files decoded until
    then are appended to ``calls``, the next one raises KeyboardInterrupt."""
    real = _DECODE_IMAGE  # not images.decode_image: that may be an earlier stop_after by now

    def decode(path: Path, *a: Any) -> np.ndarray:
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, *a)

    return decode


def test_an_interrupted_build_resumes_from_its_committed_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C after 10 of 36 files, commits every 4: the next build decodes only the 28 files
    of no commit, continuing the file it was writing; rows that do not match their commit's
    CRC are not trusted (their files are decoded again)."""
    from mnistkit.data import imagecache

    monkeypatch.setattr(imagecache, "PARTIAL_CHUNK", 4)
    root = tmp_path / "data"
    make_folder(root)
    calls: list[Path] = []
    monkeypatch.setattr(images, "decode_image", stop_after(10, calls))
    with pytest.raises(KeyboardInterrupt):
        load(root)
    first = list(calls)
    folder = tmp_path / "cache/images"
    assert not list(folder.glob("*.json"))  # no cache index: nothing a run would trust
    (partial,) = folder.glob("*.partial")
    assert len(list(partial.glob("commit-*.json"))) == 2  # files 1-4 and 5-8; 9-10 not committed
    (part,) = folder.glob("*.rows.part")
    assert part.stat().st_size == 10 * 300  # every row written once, into the data file itself
    calls.clear()
    monkeypatch.setattr(images, "decode_image", stop_after(10**6, calls))
    data = load(root)
    assert len(calls) == 28 and not set(calls) & set(first[:8])
    assert sorted([*first[:8], *calls]) == sorted(data.files)
    assert "28 decoded, 8 reused" in data.source
    assert "8 file(s) decoded by an interrupted build were reused" in data.cache_note
    check_pixels(data)
    assert not partial.exists() and not list(folder.glob("*.part"))
    (rows,) = folder.glob("*.rows")
    assert rows.name == part.name.removesuffix(".part") and rows.stat().st_size == 36 * 300

    # Rows changed in place after their commit are detected by the CRC and decoded again.
    shutil.rmtree(folder)
    calls.clear()
    monkeypatch.setattr(images, "decode_image", stop_after(10, calls))
    with pytest.raises(KeyboardInterrupt):
        load(root)
    (part,) = folder.glob("*.rows.part")
    with open(part, "r+b") as f:  # a byte of row 6: the second commit's
        f.seek(6 * 300 + 17)
        byte = f.read(1)
        f.seek(6 * 300 + 17)
        f.write(bytes([byte[0] ^ 0xFF]))
    calls.clear()
    monkeypatch.setattr(images, "decode_image", stop_after(10**6, calls))
    data = load(root)
    assert len(calls) == 32 and "32 decoded, 4 reused" in data.source
    assert any("do not match their progress record" in r.getMessage() for r in caplog.records)
    check_pixels(data)


def test_the_data_check_identity_of_a_cached_folder_comes_from_its_index(tmp_path: Path) -> None:
    """A cached start does not hash every pixel to find its data check: the cache's index (every
    file's size and mtime, the rows' sampled checksum) stands for them. The same files give the
    same identity in both modes; a changed file gives another."""
    import dataclasses

    from mnistkit.data.check import identity
    from mnistkit.data.types import Split

    root = tmp_path / "data"
    make_folder(root, per_class=4)
    mem, mapped = load(root, cache_mode="memory"), load(root, cache_mode="mmap")
    assert mem.content_id and mem.content_id == mapped.content_id
    assert identity(mem) == identity(mapped)
    # Not read: other bytes under the same index give the same identity (no pixel is hashed) ...
    zeros = Split(torch.zeros_like(mem.train.x), mem.train.y)
    assert identity(dataclasses.replace(mem, train=zeros)) == identity(mem)
    # ... and without an index, the bytes are what counts (the MNIST family's way).
    plain = dataclasses.replace(mem, content_id=None)
    assert identity(dataclasses.replace(plain, train=zeros)) != identity(plain)
    write_image(root / "bee/01.png", 999)  # a change the index sees: size or mtime
    os.utime(root / "bee/01.png", ns=(5, 5))
    changed = load(root, cache_mode="mmap")
    assert "1 decoded, 11 reused" in changed.source
    assert changed.content_id != mem.content_id and identity(changed) != identity(mem)


# A test-side hook, no product code: every Python process of the job (both ranks, and any
# decoding process they spawn) imports sitecustomize, which logs each decode_image call.
COUNTING_SITE = """\
import os, time
import mnistkit.data.images as images
_real = images.decode_image
def _logged(path, *a):
    with open(os.environ["DECODE_LOG"], "a") as f:
        f.write(f"{os.getpid()} {path}\\n")
    time.sleep(0.03)  # decoding that takes a while: a second decoder would overlap
    return _real(path, *a)
images.decode_image = _logged
"""


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_ranks_share_one_mapped_cache_and_decode_each_file_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    make_folder(tmp_path / "data", per_class=12)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(COUNTING_SITE)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache="mmap").replace("epochs: 2", "epochs: 1"))
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MNISTKIT_DATA", "MNISTKIT_KILL_AT")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(repo)]),
        DECODE_LOG=str(tmp_path / "decoded.log"),
        MNISTKIT_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
    )
    argv = [sys.executable, "-m", "mnistkit", "run", str(recipe), "--nproc", "2"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--progress", "plain"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mmap (data.cache: mmap)" in res.stdout
    decoded = [line.split(" ", 1)[1] for line in (tmp_path / "decoded.log").read_text().splitlines()]
    want = sorted(str(p) for p in (tmp_path / "data").rglob("*.*"))
    assert sorted(decoded) == want  # every file once, by one rank, for both
    (index,) = (tmp_path / "cache/images").glob("*.json")
    assert len(list((tmp_path / "cache/images").glob("*.rows"))) == 1
    assert len(RunDir(tmp_path / "run").read_metrics()) == 1


def test_added_files_are_appended_to_the_data_file_and_dead_rows_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding files writes only their rows, at the end of the same data file (the rows already
    there are not copied); a build that would leave more than half of the file dead writes a
    fresh one with the live rows only."""
    root = tmp_path / "data"
    make_folder(root, per_class=5)
    row = 3 * 10 * 10
    load(root, cache_mode="mmap")
    _, before = cache_files(tmp_path)
    inode, head = before.stat().st_ino, before.read_bytes()
    assert len(head) == 15 * row
    for i in range(3):
        write_image(root / CLASSES[i] / f"new{i}.png", 900 + i)
    grown = load(root, cache_mode="mmap")
    assert "3 decoded, 15 reused" in grown.source
    _, after = cache_files(tmp_path)
    assert after == before and after.stat().st_ino == inode  # the same file, appended to
    assert after.stat().st_size == 18 * row and after.read_bytes()[: 15 * row] == head
    check_pixels(grown)
    # 10 of the 18 rows dead (files removed) and one file added: compacted to 9 rows.
    gone = sorted(root.rglob("0[0-3].*")) + sorted(root.rglob("new[01].png"))
    assert len(gone) == 14
    for f in gone[:10]:
        f.unlink()
    write_image(root / "ant/late.png", 999)
    small = load(root, cache_mode="mmap")
    assert "1 decoded, 8 reused" in small.source
    _, compacted = cache_files(tmp_path)
    assert compacted != before and compacted.stat().st_size == 9 * row
    check_pixels(small)


def test_an_interrupted_append_leaves_a_tail_no_run_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    make_folder(root, per_class=4)
    load(root, cache_mode="mmap")
    row = 3 * 10 * 10
    for i in range(3):
        write_image(root / "bee" / f"new{i}.png", 700 + i)
    monkeypatch.setattr(images, "decode_image", stop_after(2, []))
    with pytest.raises(KeyboardInterrupt):
        load(root, cache_mode="mmap")
    monkeypatch.undo()
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    _, data = cache_files(tmp_path)
    assert data.stat().st_size == 14 * row  # two rows appended past what the index names
    # A run on the files the index knows is served from it: the tail is not looked at ...
    moved = tmp_path / "aside"
    moved.mkdir()
    for i in range(3):
        (root / "bee" / f"new{i}.png").rename(moved / f"new{i}.png")
    assert "loaded from cache" in load(root, cache_mode="mmap").source
    # ... and the next build cuts it off before appending (one file back: one row).
    (moved / "new0.png").rename(root / "bee/new0.png")
    again = load(root, cache_mode="mmap")
    assert "1 decoded, 12 reused" in again.source
    assert data.stat().st_size == 13 * row
    check_pixels(again)
