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
STOP_AT = {"MNISTKIT_KILL_AT": "2:5:STOP", "MNISTKIT_HOOK_RANK": "1"}


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
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

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
        ended = time.monotonic()
        self._reader.join(timeout=10)
        return code, ended

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def torchrun(host: netns.Host, port: int, cwd: Path, *args: Any, **env: str) -> Job:
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = torchrun
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=host-a:{port}",
        f"--rdzv-id=job{port}",
        "-m",
        "mnistkit",
        "run",
        *map(str, args),
    ]
    return Job(host, argv, cwd, **env)


def on_both(hosts: netns.TwoHosts, port: int, folders: tuple[Path, Path], *args: Any, **b_env: str) -> Job:
    """The same command on A and on B (B's environment plus ``b_env``); returns A's job and
    keeps B's as ``job.b``."""
    a = torchrun(hosts.a, port, folders[0], *args)
    a.b = torchrun(hosts.b, port, folders[1], *args, **b_env)  # type: ignore[attr-defined]
    return a


def _one_run(folder: Path) -> Path:
    found = sorted((folder / "runs").iterdir())
    assert len(found) == 1, found
    return found[0]


def _columns(run_dir: Path) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in RunDir(run_dir).read_metrics()]


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _stopped(job: Job) -> None:
    """Wait until B's worker has stopped itself (the SIGSTOP hook)."""
    job.wait_for("MNISTKIT_KILL_AT: signal")


@pytest.fixture(scope="module")
def hosts() -> Iterator[netns.TwoHosts]:
    why = netns.why_not_available()
    if why:
        pytest.skip(why)
    with netns.two_hosts(hostnames=True) as pair:
        yield pair


@pytest.fixture(scope="module")
def jobs(hosts: netns.TwoHosts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted 2-host run, the same recipe in one process, and a 2-host run that B's
    worker stops in epoch 2 (its fault is made by the tests below), started together."""
    root = tmp_path_factory.mktemp("multihost")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    folders = {name: (root / f"{name}-a", root / f"{name}-b") for name in ("two", "kill", "cable")}
    for pair in folders.values():
        for folder in pair:
            folder.mkdir()
    one = root / "one"
    out: dict[str, Any] = {"root": root, "recipe": recipe, "folders": folders}
    out["two"] = on_both(hosts, 29611, folders["two"], recipe)
    out["one"] = Job(hosts.a, [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(one)], root)
    code, _ = out["one"].finish()
    assert code == 0, out["one"].output
    out["one_dir"] = one
    for job in (out["two"], out["two"].b):
        code, _ = job.finish()
        assert code == 0, job.output
    return out


def test_two_hosts_match_one_process(jobs: dict[str, Any]) -> None:
    two_a, two_b = jobs["folders"]["two"]
    run_dir = _one_run(two_a)
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
    print(
        f"\n2 hosts vs 1 process: largest parameter difference {worst:.2e}, largest loss rel. {loss_rel:.2e}"
    )
    assert SPLIT_SIZES in jobs["two"].output


def test_one_run_directory_on_a_and_env_records_both_hosts(
    jobs: dict[str, Any], hosts: netns.TwoHosts
) -> None:
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
