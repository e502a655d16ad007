"""Data-parallel training across two hosts (issue 24): torchrun on host A and on host B.

The hosts are network namespaces joined by a veth pair (tests/netns.py), each with its own host
name (``host-a``, ``host-b``) and the /etc/hosts a Debian installer writes: its own name on the
loopback address 127.0.1.1, the other's on its veth address. That is the case where gloo, left to
itself, listens on loopback and the other host's connections are refused; mnistkit has to choose
the interface (training/nodes.py). Every job is the exact command a user types on two machines:

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint host-a:PORT \\
        -m mnistkit run RECIPE

started on A (in one folder) and on B (in another), on the bundled ``digits`` data with
tests/test_distributed.py's recipe (batch 63: every step splits 32 + 31). Faults are made at a
known step: B's worker stops itself (SIGSTOP, a test hook) in epoch 2, step 5, after epoch 1's
checkpoint; the test then kills everything on B (kill -9) or pulls B's cable and lets the
worker go on.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
import torch
from test_distributed import COMPARED, RECIPE, SPLIT_SIZES, _env

from mnistkit.runs.directory import RunDir

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
LONELY_JOIN_TIMEOUT_S = 15  # how long A waits for a host B that never starts (default: 600 s)
MNISTKIT = [sys.executable, "-m", "mnistkit"]
STOPPED = "MNISTKIT_KILL_AT: signal"  # the test hook, about to stop B's worker


class Job:
    """One process tree started on a host, its output collected line by line with the time."""

    def __init__(self, host: netns.Host, argv: list[str], cwd: Path, **env: str) -> None:
        self.proc = host.popen(
            argv,
            cwd=cwd,
            env=_env(OMP_NUM_THREADS="1", **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.ended = 0.0
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))
        self.ended = time.monotonic()  # the output closed: every process of the tree has exited

    def said(self, marker: str) -> float | None:
        """When ``marker`` appeared in the output (None: it did not)."""
        return next((t for t, line in list(self.lines) if marker in line), None)

    def wait_for(self, marker: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if marker in line:
                    return t
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{marker!r} never appeared:\n{self.output}")

    def finish(self, timeout: float = 180) -> tuple[int, float]:
        """Exit code, and when it ended."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code, self.ended

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def torchrun(host: netns.Host, port: int, cwd: Path, *args: Any, join_timeout: int = 60, **env: str) -> Job:
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = torchrun
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=host-a:{port}",
        f"--rdzv-id=job{port}",
        f"--rdzv-conf=join_timeout={join_timeout}",  # as docs/distributed.md says to
        "-m",
        "mnistkit",
        "run",
        *map(str, args),
    ]
    return Job(host, argv, cwd, **env)


def on_both(
    hosts: netns.TwoHosts,
    port: int,
    folders: tuple[Path, Path],
    *args: Any,
    both: dict[str, str] | None = None,
    **b_env: str,
) -> Job:
    """The same command on A and on B (with ``both`` in the environment of both, ``b_env`` in
    B's); returns A's job and keeps B's as ``job.b``."""
    a = torchrun(hosts.a, port, folders[0], *args, **(both or {}))
    a.b = torchrun(hosts.b, port, folders[1], *args, **(both or {}), **b_env)  # type: ignore[attr-defined]
    return a


def _one_run(folder: Path) -> Path:
    found = sorted((folder / "runs").iterdir())
    assert len(found) == 1, found
    return found[0]


def _columns(run_dir: Path) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in RunDir(run_dir).read_metrics()]


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _flat(text: str) -> str:
    """``text`` with its line breaks (a message wrapped to 80 columns) as spaces."""
    return " ".join(text.split())


def _since(t: float | None, fault: float) -> float | None:
    return None if t is None else t - fault


def _succeeded(*jobs: Job) -> None:
    for job in jobs:
        assert job.proc.returncode == 0, job.output


def _no_mnistkit_traceback(output: str) -> None:
    """mnistkit's own processes end with a message, not a traceback (torchrun's report of its
    failed worker is torchrun's)."""
    assert f'File "{REPO / "mnistkit"}' not in output, output


def _pair() -> Iterator[netns.TwoHosts]:
    why = netns.why_not_available()
    if why:
        pytest.skip(why)
    with netns.two_hosts(hostnames=True) as pair:
        yield pair


# A pair of hosts per fault: kill -9 on B kills every process there, and pulling B's cable cuts
# off everything between A and B, so each fault has its own pair and the other jobs run meanwhile.
hosts = pytest.fixture(scope="module")(_pair)
kill_hosts = pytest.fixture(scope="module")(_pair)
cable_hosts = pytest.fixture(scope="module")(_pair)


def _make_fault(pair: netns.TwoHosts, name: str) -> float:
    """B's worker has stopped itself: kill everything on B (``kill``), or pull B's cable and let
    its worker go on (``cable``). Returns when the fault was made."""
    if name == "cable":
        pair.b.link(False)
        fault = time.monotonic()
        pair.b.kill_all(signal.SIGCONT)  # B's worker goes on, cut off from A
        return fault
    pair.b.kill_all(signal.SIGKILL)
    return time.monotonic()


def _wait_for_stops(jobs: dict[str, tuple[netns.TwoHosts, Job]]) -> dict[str, float]:
    """Make each job's fault as soon as its worker on B has stopped itself (within 10 s, or A
    would already have given B up for lost); returns when each fault was made."""
    made: dict[str, float] = {}
    deadline = time.monotonic() + 240
    while len(made) < len(jobs) and time.monotonic() < deadline:
        for name, (pair, job) in jobs.items():
            if name in made:
                continue
            if any(STOPPED in line for _, line in list(job.b.lines)):  # type: ignore[attr-defined]
                made[name] = _make_fault(pair, name)
            elif job.proc.poll() is not None or job.b.proc.poll() is not None:  # type: ignore[attr-defined]
                raise AssertionError(f"{name}: ended before the fault\n{job.output}\n{job.b.output}")  # type: ignore[attr-defined]
        time.sleep(0.02)
    assert len(made) == len(jobs), "the workers on B never stopped"
    return made


@pytest.fixture(scope="module")
def jobs(
    hosts: netns.TwoHosts,
    kill_hosts: netns.TwoHosts,
    cable_hosts: netns.TwoHosts,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Everything at once, so that the start-ups overlap: the uninterrupted 2-host run, the same
    recipe in one process, and two 2-host runs whose worker on B stops itself in epoch 2, step 5
    (after epoch 1's checkpoint): one gets kill -9 on B, the other B's cable pulled. After the
    kill, the run is resumed on two hosts and (a copy) on one, while the cable fault plays out."""
    root = tmp_path_factory.mktemp("multihost")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    folders = {name: (root / f"{name}-a", root / f"{name}-b") for name in ("two", "kill", "cable", "lo")}
    for pair in folders.values():
        for folder in pair:
            folder.mkdir()
    one_dir = root / "one"
    out: dict[str, Any] = {"root": root, "folders": folders, "one_dir": one_dir}
    out["two"] = on_both(hosts, 29611, folders["two"], recipe)
    out["one"] = Job(
        hosts.a, [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(one_dir)], root
    )
    faulty = {
        "kill": (
            kill_hosts,
            on_both(kill_hosts, 29612, folders["kill"], recipe, MNISTKIT_KILL_AT="2:5:STOP"),
        ),
        "cable": (
            cable_hosts,
            on_both(cable_hosts, 29613, folders["cable"], recipe, MNISTKIT_KILL_AT="2:5:STOP"),
        ),
    }
    # The user sets gloo's interface to loopback on both hosts (kept: it is theirs); a bounded
    # collective timeout, as the side whose connection is not refused waits for it.
    wrong = {"GLOO_SOCKET_IFNAME": "lo", "MNISTKIT_DIST_TIMEOUT": "20"}
    out["lo"] = on_both(hosts, 29616, folders["lo"], recipe, both=wrong)
    # Host B never starts: A's torchrun gives up after the join timeout.
    out["lonely"] = torchrun(hosts.a, 29615, folders["two"][0], recipe, join_timeout=LONELY_JOIN_TIMEOUT_S)
    out["lonely_started"] = time.monotonic()
    made = _wait_for_stops(faulty)
    for name, (_, job) in faulty.items():
        out[name] = {"job": job, "b_dir": folders[name][1]}
    # kill -9: A ends; resume (on two hosts, and a copy on one) while the cable fault plays out.
    kill = out["kill"]
    code, ended = kill["job"].finish()
    kill.update(code=code, after=ended - made["kill"], run=_one_run(folders["kill"][0]))
    kill["said"] = _since(kill["job"].said("lost node"), made["kill"])
    kill["job"].b.finish(timeout=30)
    kill["copy"] = root / "kill-copy"
    shutil.copytree(kill["run"], kill["copy"])
    kill["status"] = RunDir(kill["run"]).read_status()
    kill["ckpt"] = torch.load(kill["run"] / "last.pt", weights_only=True)
    kill["rows"] = RunDir(kill["run"]).read_metrics()
    kill["again"] = on_both(kill_hosts, 29614, folders["kill"], "--resume", kill["run"])
    kill["one"] = Job(kill_hosts.a, [*MNISTKIT, "run", "--resume", str(kill["copy"])], root)
    # The pulled cable: A ends; B's worker (cut off, not killed) finds A gone too.
    cable = out["cable"]
    code, ended = cable["job"].finish()
    cable.update(code=code, after=ended - made["cable"], run=_one_run(folders["cable"][0]))
    cable["said"] = _since(cable["job"].said("lost node"), made["cable"])
    deadline = time.monotonic() + 30
    while cable["job"].b.said("lost node") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    cable["b_said"] = _since(cable["job"].b.said("lost node"), made["cable"])
    cable_hosts.b.kill_all(signal.SIGKILL)  # its torchrun agent would wait much longer
    cable["job"].b.finish(timeout=30)
    cable["status"] = RunDir(cable["run"]).read_status()
    cable["ckpt"] = torch.load(cable["run"] / "last.pt", weights_only=True)
    cable["rows"] = RunDir(cable["run"]).read_metrics()
    for job in (out["one"], out["two"], out["two"].b, kill["again"], kill["again"].b, kill["one"]):
        job.finish()  # the tests check the exit codes
    out["lo"].finish()
    out["lo"].b.finish()
    code, ended = out["lonely"].finish()
    out["lonely_after"] = (code, ended - out["lonely_started"])
    return out


def test_two_hosts_match_one_process(jobs: dict[str, Any]) -> None:
    _succeeded(jobs["one"], jobs["two"], jobs["two"].b)
    run_dir = _one_run(jobs["folders"]["two"][0])
    one, two = _model(jobs["one_dir"]), _model(run_dir)
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], msg=lambda m, k=key: f"{k}: {m}")
    m1, m2 = RunDir(jobs["one_dir"]).read_metrics(), RunDir(run_dir).read_metrics()
    assert len(m1) == len(m2) == 2
    loss_rel = 0.0
    for r1, r2 in zip(m1, m2, strict=True):
        for key in ("train_acc", "val_acc", "test_acc", "lr"):
            assert r2[key] == r1[key], key
        for key in ("train_loss", "val_loss", "test_loss"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
            loss_rel = max(loss_rel, abs(r2[key] - r1[key]) / abs(r1[key]))
    print(f"\n2 hosts vs 1 process: largest parameter difference {worst:.1e}, loss rel. {loss_rel:.1e}")
    assert SPLIT_SIZES in jobs["two"].output


def test_one_run_directory_on_a_and_env_records_both_hosts(
    jobs: dict[str, Any], hosts: netns.TwoHosts
) -> None:
    _succeeded(jobs["two"], jobs["two"].b)
    two_a, two_b = jobs["folders"]["two"]
    run_dir = _one_run(two_a)
    assert list(two_b.iterdir()) == []  # B's working folder: nothing written there
    env = json.loads((run_dir / "env.json").read_text())["distributed"]
    assert env["world_size"] == 2
    assert env["hosts"] == ["host-a", "host-b"]
    assert env["nodes"] == [
        {"host": "host-a", "address": hosts.a.address},
        {"host": "host-b", "address": hosts.b.address},
    ]
    # Both names resolve to loopback on their own host (127.0.1.1): mnistkit chose the interface.
    assert env["interface"] == {"name": hosts.a.ifname, "chosen_by": "mnistkit"}
    assert "2 processes (gloo) on 2 machine(s)" in jobs["two"].output


def _check_lost(fault: dict[str, Any]) -> None:
    job = fault["job"]
    assert fault["code"] != 0, job.output
    assert fault["after"] < 30, job.output
    assert "error: (rank 0) lost node host-b (10.231.0.2, rank 1)" in _flat(job.output), job.output
    _no_mnistkit_traceback(job.output)
    assert (fault["ckpt"]["epoch"], fault["ckpt"]["step"]) == (1, 0)  # loads; the end of epoch 1
    assert [r["epoch"] for r in fault["rows"]] == [1]
    assert fault["status"]["status"] == "failed", fault["status"]
    assert "lost node host-b" in fault["status"]["error"], fault["status"]
    assert list(fault["b_dir"].iterdir()) == []


def test_node_killed_ends_the_job_naming_it(jobs: dict[str, Any]) -> None:
    _check_lost(jobs["kill"])
    assert "the connection to it closed" in _flat(jobs["kill"]["job"].output)
    kill = jobs["kill"]
    print(f"\nkill -9 on B: A said so after {kill['said']:.1f} s, its job ended after {kill['after']:.1f} s")


def test_cable_pulled_ends_the_job_on_both_sides(jobs: dict[str, Any]) -> None:
    cable = jobs["cable"]
    _check_lost(cable)
    assert "no heartbeat for 10 s" in _flat(cable["job"].output)
    b_output = cable["job"].b.output
    assert "error: (rank 1) lost node host-a (10.231.0.1, rank 0)" in _flat(b_output), b_output
    _no_mnistkit_traceback(b_output)
    assert cable["b_said"] is not None and cable["b_said"] < 30
    print(
        f"\nB's cable pulled: A said so after {cable['said']:.1f} s, its job ended after "
        f"{cable['after']:.1f} s; B's worker said so after {cable['b_said']:.1f} s"
    )


def test_resume_after_a_lost_node_on_two_hosts_and_on_one(jobs: dict[str, Any]) -> None:
    kill = jobs["kill"]
    _succeeded(kill["again"], kill["again"].b, kill["one"])
    uninterrupted = _one_run(jobs["folders"]["two"][0])
    # Two hosts again: exactly the uninterrupted run (B reads the run directory at the same path,
    # as on a shared filesystem; it writes nothing).
    assert _columns(kill["run"]) == _columns(uninterrupted)
    for key, value in _model(uninterrupted).items():
        assert torch.equal(_model(kill["run"])[key], value), key
    assert list(kill["b_dir"].iterdir()) == []
    # One process: continues with a note; the same global batch, so the run one process would
    # have trained (up to floating-point rounding).
    output = _flat(kill["one"].output)
    assert "the number of processes changed from 2 to 1" in output, output
    assert "the global batch (data.batch_size 63)" in output, output
    rows = RunDir(kill["copy"]).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for r1, r2 in zip(RunDir(jobs["one_dir"]).read_metrics(), rows, strict=True):
        for key in ("train_acc", "val_acc", "test_acc", "lr"):
            assert r2[key] == r1[key], key
        for key in ("train_loss", "val_loss", "test_loss"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key


def test_host_b_never_starts_the_rendezvous_ends_after_join_timeout(jobs: dict[str, Any]) -> None:
    code, after = jobs["lonely_after"]
    output = jobs["lonely"].output
    assert code != 0, output
    # It waited for B (not a failure of its own), and then ended: without a join timeout it
    # would wait 600 s (the fixture's wait would fail first). The margin covers torchrun's start.
    assert LONELY_JOIN_TIMEOUT_S <= after < LONELY_JOIN_TIMEOUT_S + 60, output
    assert "RendezvousTimeoutError" in output  # torchrun's: mnistkit has not started yet
    print(f"\nhost B never started: A's torchrun gave up after {after:.1f} s")


def test_gloo_on_loopback_across_hosts_is_a_clear_error(jobs: dict[str, Any]) -> None:
    job = jobs["lo"]
    assert job.proc.returncode != 0 and job.b.proc.returncode != 0, job.output + job.b.output
    said = _flat(job.output + job.b.output)
    assert "the processes could not connect to each other (gloo)" in said, said
    assert "set GLOO_SOCKET_IFNAME=INTERFACE on every machine" in said
    _no_mnistkit_traceback(job.output + job.b.output)
    assert not (jobs["folders"]["lo"][0] / "runs").exists()  # nothing started, nothing written


# -- which interface gloo listens on (training/nodes.py), without training: one Python call per
# -- host, on a pair of its own where host A has a second interface.
CHOOSE = "from mnistkit.training.nodes import choose_interface as c; print(c('host-a', True))"


@pytest.fixture(scope="module")
def two_nics() -> Iterator[netns.TwoHosts]:
    yield from _pair()


def _choose(host: netns.Host, **env: str) -> subprocess.CompletedProcess[str]:
    return host.run([sys.executable, "-c", CHOOSE], env=_env(**env), cwd=REPO)


def test_interface_is_the_one_that_reaches_the_rendezvous_host(two_nics: netns.TwoHosts) -> None:
    a, b = two_nics.a, two_nics.b
    for host in (a, b):  # a second interface on each (a bridge, a VPN): a veth pair of its own
        for args in (
            ["link", "add", "extra0", "type", "veth", "peer", "name", "extra1"],
            ["addr", "add", "10.99.0.1/24", "dev", "extra0"],
            ["link", "set", "extra0", "up"],
        ):
            subprocess.run(["ip", "-n", host.name, *args], check=True)
    # B reaches host-a through its veth: that one, not the other.
    assert _choose(b).stdout.strip() == f"('{b.ifname}', 'mnistkit')"
    # A is the rendezvous host: host-a is itself (127.0.1.1), two candidates, it cannot tell.
    res = _choose(a)
    assert res.returncode != 0
    flat = _flat(res.stderr)
    assert f"candidates: {a.ifname} ({a.address}), extra0 (10.99.0.1)" in flat, res.stderr
    assert "Set GLOO_SOCKET_IFNAME=INTERFACE" in flat
    # What the user sets is kept.
    assert _choose(a, GLOO_SOCKET_IFNAME=a.ifname).stdout.strip() == f"('{a.ifname}', '$GLOO_SOCKET_IFNAME')"
