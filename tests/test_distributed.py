"""Data-parallel training (issue 12): real processes through the real launcher, gloo on CPU.

Every job here is ``python -m mnistkit run --nproc 2`` (torch.distributed.run with a standalone
rendezvous) or plain ``python -m torch.distributed.run ... -m mnistkit run``, on the bundled
``digits`` data (1,438 training images). The batch of 63 is odd, so every step splits 32 + 31
samples: the uneven case is the one tested. One fixture starts the 2-process runs and the
1-process run at once so their start-ups overlap.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.runs.directory import RunDir

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
HOOK_ENVS = ("MNISTKIT_KILL_AT", "MNISTKIT_NAN_AT", "MNISTKIT_RAISE_AT", "MNISTKIT_HOOK_RANK")

# No dropout, no BatchNorm: one process and two must take the same steps. A validation split of
# 10 % of digits' 1,438 training images (144) leaves 1,294: 1,294 / 63 = 21 steps per epoch (the
# last one 34 = 17 + 17), 42 steps in all. One thread per process. Augmented: the random draws are
# the same whatever the number of processes (each augments the global batch). Plain progress
# prints the split sizes, which must not depend on the number of processes or on --resume.
RECIPE = """\
name: dist-test
seed: 5
data:
  dataset: digits
  batch_size: 63
  val_split: 0.1
  augment: [{type: random_crop, padding: 1}, horizontal_flip]
model: {hidden: [48, 24]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
scheduler: {name: onecycle, max_lr: 0.1}
epochs: 2
train: {plots: false, progress: plain, threads: 1}
"""
SPLIT_SIZES = "digits: 1,294 train / 144 val / 359 test"
COMPARED = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HOOK_ENVS and k != "MNISTKIT_DATA"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _mnistkit(*args: Any, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mnistkit", *map(str, args)],
        cwd=REPO,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two identical 2-process runs (one by ``run --nproc 2``, one by plain torchrun) and the same
    recipe in one process, started together."""
    root = tmp_path_factory.mktemp("dist")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    dirs = {name: root / name for name in ("two", "two_torchrun", "one", "ctrl_c")}
    procs = {
        "two": _mnistkit("run", recipe, "--nproc", "2", "--out", dirs["two"]),
        "two_torchrun": subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "mnistkit",
                "run",
                str(recipe),
                "--out",
                str(dirs["two_torchrun"]),
            ],
            cwd=REPO,
            env=_env(OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "one": _mnistkit("run", recipe, "--out", dirs["one"]),
        # A Ctrl-C that reaches one process only, mid-epoch (torchrun forwards a real one to all).
        "ctrl_c": _mnistkit(
            "run",
            recipe,
            "--nproc",
            "2",
            "--out",
            dirs["ctrl_c"],
            MNISTKIT_KILL_AT="2:5:INT",
            MNISTKIT_HOOK_RANK="1",
        ),
    }
    for name, proc in procs.items():
        code, output = _finish(proc)
        expected = 130 if name == "ctrl_c" else 0
        assert code == expected, f"{name}: exit {code}\n{output}"
        (root / f"{name}.log").write_text(output, encoding="utf-8")
    dirs["recipe"] = recipe
    dirs["ctrl_c_copy"] = tmp_path_factory.mktemp("copy") / "ctrl_c"
    shutil.copytree(dirs["ctrl_c"], dirs["ctrl_c_copy"])
    return dirs


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_metrics()


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _columns(run_dir: Path) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in _metrics(run_dir)]


def test_two_processes_match_one(runs: dict[str, Path]) -> None:
    one, two = _model(runs["one"]), _model(runs["two"])
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], msg=lambda m, k=key: f"{k}: {m}")
    m1, m2 = _metrics(runs["one"]), _metrics(runs["two"])
    assert len(m1) == len(m2) == 2
    for r1, r2 in zip(m1, m2, strict=True):
        assert r2["train_acc"] == r1["train_acc"]
        assert r2["val_acc"] == r1["val_acc"]
        assert r2["test_acc"] == r1["test_acc"]
        assert r2["lr"] == r1["lr"]
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-5)
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-5)


def test_validation_split_keeps_its_size_with_two_processes(runs: dict[str, Path]) -> None:
    # Evaluated on the same 144 images whatever the launcher: the val metrics above agree too.
    for name in ("one", "two", "two_torchrun", "ctrl_c"):
        output = (runs["recipe"].parent / f"{name}.log").read_text(encoding="utf-8")
        assert SPLIT_SIZES in output, f"{name}:\n{output}"


def test_identical_distributed_runs_identical_metrics(runs: dict[str, Path]) -> None:
    # One was launched by `mnistkit run --nproc 2`, the other by plain torchrun.
    assert _columns(runs["two"]) == _columns(runs["two_torchrun"])
    for key, value in _model(runs["two"]).items():
        assert torch.equal(value, _model(runs["two_torchrun"])[key]), key


def test_run_directory_written_by_rank_zero(runs: dict[str, Path]) -> None:
    import json

    env = json.loads((runs["two"] / "env.json").read_text())
    assert env["distributed"]["world_size"] == 2
    assert env["distributed"]["backend"] == "gloo"
    assert env["distributed"]["hosts"]
    assert json.loads((runs["one"] / "env.json").read_text())["distributed"]["world_size"] == 1
    ckpt = torch.load(runs["two"] / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    # Nothing written twice or under another name: only rank 0 created a run directory.
    assert sorted(p.name for p in runs["two"].parent.iterdir() if p.is_dir()) == [
        "ctrl_c",
        "one",
        "two",
        "two_torchrun",
    ]


def test_resume_with_another_process_count_continues_with_a_note(runs: dict[str, Path]) -> None:
    # A 2-process run stopped in epoch 2 (the Ctrl-C one, copied before it is resumed), resumed
    # by one process: what a job does that lost a machine. Same global batch, so it ends where
    # one process would have (up to floating-point rounding).
    result = CliRunner().invoke(app, ["run", "--resume", str(runs["ctrl_c_copy"])])
    assert result.exit_code == 0, result.output
    assert "the number of processes changed from 2 to 1" in result.output
    assert "the global batch (data.batch_size 63)" in result.output
    for r1, r2 in zip(_metrics(runs["one"]), _metrics(runs["ctrl_c_copy"]), strict=True):
        for key in ("train_acc", "val_acc", "test_acc"):
            assert r2[key] == r1[key], key
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-5)


def test_ctrl_c_on_one_rank_stops_all_at_one_step_and_resumes_exactly(runs: dict[str, Path]) -> None:
    run_dir = runs["ctrl_c"]
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)  # epoch 2 (0-based 1), after step 5: one step for all
    code, output = _finish(_mnistkit("run", "--resume", run_dir, "--nproc", "2"))
    assert code == 0, output
    assert SPLIT_SIZES in output
    assert _columns(run_dir) == _columns(runs["two"])
    for key, value in _model(runs["two"]).items():
        assert torch.equal(_model(run_dir)[key], value), key


def _time_to_exit_after(proc: subprocess.Popen[str], marker: str, timeout: float = 240) -> tuple[float, str]:
    """Seconds from the line containing ``marker`` on stderr to the job's exit, and all output."""
    lines: list[str] = []
    seen: list[float] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line and not seen:
                seen.append(time.monotonic())
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc.wait(timeout=timeout)
    ended = time.monotonic()
    reader.join(timeout=10)
    out = proc.stdout.read() if proc.stdout else ""
    text = out + "".join(lines)
    assert seen, f"{marker!r} never appeared:\n{text}"
    return ended - seen[0], text


def _fault_on_rank_1(recipe: Path, out: Path, hook: str, at: str) -> str:
    """A 2-process run whose rank 1 meets ``hook`` (a faults.py test hook) at ``at``: the whole
    job must fail within 30 s of it. Returns the job's output."""
    proc = _mnistkit("run", recipe, "--nproc", "2", "--out", out, **{hook: at}, MNISTKIT_HOOK_RANK="1")
    after, output = _time_to_exit_after(proc, hook)
    assert proc.returncode != 0, output
    assert after < 30, output
    return output


def test_exception_on_one_rank_ends_the_job(runs: dict[str, Path], tmp_path: Path) -> None:
    output = _fault_on_rank_1(runs["recipe"], tmp_path / "run", "MNISTKIT_RAISE_AT", "2:3")
    assert "(rank 1) RuntimeError: MNISTKIT_RAISE_AT" in output  # that rank's message
    # rank 1 is named whether it exited (code 1) before torchrun noticed rank 0 stopping, or was
    # still in interpreter shutdown and got SIGTERM; rank 0 never looks like the cause
    ended = r"(was stopped by torchrun|was killed by SIGKILL)"
    assert re.search(rf"process rank 1 \(pid \d+\) (exited with code 1|{ended})", output), output
    assert re.search(rf"process rank 0 \(pid \d+\) (stopped: it lost its connection|{ended})", output), output


def test_kill_9_then_resume_equals_uninterrupted(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    output = _fault_on_rank_1(runs["recipe"], run_dir, "MNISTKIT_KILL_AT", "2:5")
    assert "killed by SIGKILL" in output
    assert [r["epoch"] for r in _metrics(run_dir)] == [1]  # epoch 2 was cut off

    code, output = _finish(_mnistkit("run", "--resume", run_dir, "--nproc", "2"))
    assert code == 0, output
    assert SPLIT_SIZES in output
    assert _columns(run_dir) == _columns(runs["two"])
    for key, value in _model(runs["two"]).items():
        assert torch.equal(_model(run_dir)[key], value), key


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in HOOK_ENVS:
        monkeypatch.delenv(name, raising=False)
    yield
