"""Checkpoints, resume and the training options around them (issue 5), on CPU with `digits`.

The central promise: a run that is killed (``kill -9`` mid-epoch, ``kill -9`` in the middle of
writing a checkpoint) or interrupted (Ctrl-C mid-epoch) and then resumed with
``mnistkit run --resume RUN_DIR`` ends with exactly the weights and metrics.csv (loss, accuracy
and lr columns) of an uninterrupted run. The kills happen in real ``python -m mnistkit``
subprocesses at a chosen training step (test hooks documented in docs/runs.md), all three
started at once by one fixture so their start-up costs overlap; resumes go through the same
CLI in-process, to keep the tests fast.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import run_info
from mnistkit.training.checkpoint import CRASH_ENV, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOOK_ENVS = ("MNISTKIT_KILL_AT", "MNISTKIT_NAN_AT", CRASH_ENV)

# Dropout (global RNG), shuffling (generator), Adam (optimizer state) and a per-step onecycle
# schedule: everything a resume has to restore. 1,438 training images / 64 = 23 steps per
# epoch. One thread: the same kernels in every process, and the parallel runs do not contend.
RECIPE = """\
name: resume-test
seed: 3
data: {dataset: digits, batch_size: 64}
model: {hidden: [64, 32], dropout: 0.1}
optimizer: {name: adam, lr: 0.003}
scheduler: {name: onecycle, max_lr: 0.01}
epochs: 3
train: {plots: false, progress: none, threads: 1}
"""
# For the option tests: constant lr, no dropout, 2 epochs.
PLAIN = """\
name: options-test
seed: 0
data: {dataset: digits, batch_size: 64}
model: {hidden: [32]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
epochs: 2
train: {plots: false, progress: none, threads: 1}
"""
COMPARED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOOK_ENVS:
        monkeypatch.delenv(name, raising=False)


def invoke(*args: Any) -> Any:
    """The CLI in this process (no interpreter start-up); never raises on a non-zero exit."""
    return CliRunner().invoke(app, [str(a) for a in args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("recipe") / "resume.yaml", RECIPE)


@pytest.fixture(scope="module")
def reference(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("ref") / "run"
    res = invoke("run", recipe_file, "--out", run)
    assert res.exit_code == 0, res.output
    assert len(RunDir(run).read_metrics()) == 3
    return run


def metrics(run: Path) -> list[dict[str, Any]]:
    return [{k: row[k] for k in COMPARED} for row in RunDir(run).read_metrics()]


def assert_same_run(reference: Path, run: Path) -> None:
    """Identical metrics (exact floats) and identical final and best weights."""
    assert metrics(run) == metrics(reference)
    for name in ("last.pt", "best.pt"):
        want, got = load_checkpoint(reference / name), load_checkpoint(run / name)
        assert got["epoch"] == want["epoch"], name
        assert list(got["model"]) == list(want["model"])
        for key, tensor in want["model"].items():
            assert torch.equal(got["model"][key], tensor), f"{name}: {key} differs"
    assert RunDir(run).read_status()["status"] == "finished"


def hermetic_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MNISTKIT_DATA", *HOOK_ENVS)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["MNISTKIT_CACHE"] = str(tmp_path / "cache")
    env.update(extra)
    return env


# What each background run does to itself: SIGKILL in step 7 of epoch 2; SIGKILL halfway
# through the second write of last.pt (end of epoch 2); SIGSTOP in step 5 of epoch 2, so the
# test's Ctrl-C lands at a known step (SIGINT waits while it is stopped, arrives on SIGCONT).
SCENARIOS = {
    "kill": {"MNISTKIT_KILL_AT": "2:7"},
    "crash": {CRASH_ENV: "last.pt:2"},
    "ctrl_c": {"MNISTKIT_KILL_AT": "2:5:STOP"},
}


@pytest.fixture(scope="module")
def launched(
    recipe_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """The three interrupted runs, started together in the background: name -> (process, dir)."""
    base = tmp_path_factory.mktemp("interrupted")
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    for name, env in SCENARIOS.items():
        run = base / name
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "mnistkit", "run", str(recipe_file), "--out", str(run)]
                + ["--progress", "plain"],
                env=hermetic_env(base, **env),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            run,
        )
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=180)
    return out + err


# ------------------------------------------------------------------------ kill, crash, Ctrl-C
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(
    launched: dict[str, Any], reference: Path
) -> None:
    proc, run = launched["kill"]
    output = finish(proc)
    assert proc.returncode == -signal.SIGKILL, output
    # Killed during epoch 2: epoch 1 is on disk; status.json still says running, but its
    # process is gone, which is how `mnistkit runs` shows it.
    assert len(RunDir(run).read_metrics()) == 1
    assert RunDir(run).read_status()["status"] == "running"
    assert run_info(run).status == "failed (killed)"
    assert run_info(run).resumable
    assert load_checkpoint(run / "last.pt")["epoch"] == 1

    res = invoke("run", "--resume", run, "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "epoch 2" in res.output
    assert_same_run(reference, run)
    assert run_info(run).status == "finished"


def test_kill_9_while_writing_a_checkpoint_then_resume_matches(
    launched: dict[str, Any], reference: Path
) -> None:
    proc, run = launched["crash"]  # SIGKILL while writing last.pt at the end of epoch 2
    output = finish(proc)
    assert proc.returncode == -signal.SIGKILL, output
    tmps = list(run.glob(".last.pt.tmp-*"))
    assert len(tmps) == 1  # the half-written file, under its temporary name only
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous one is intact
    assert len(RunDir(run).read_metrics()) == 1  # metrics.csv is written after the checkpoints

    res = invoke("run", "--resume", run, "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert not list(run.glob(".last.pt.tmp-*"))  # the dead writer's temp file is cleaned up
    assert_same_run(reference, run)


def _wait_until_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before stopping:\n{out}\n{err}")
        state = stat.read_text().rpartition(")")[2].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    pytest.fail("the run did not reach its stop point in time")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_mid_epoch_saves_says_how_to_resume_and_resumes_exactly(
    launched: dict[str, Any], reference: Path
) -> None:
    proc, run = launched["ctrl_c"]  # stopped itself in step 5 of epoch 2
    _wait_until_stopped(proc)
    proc.send_signal(signal.SIGINT)  # the user's Ctrl-C
    os.kill(proc.pid, signal.SIGCONT)
    output = finish(proc)
    assert proc.returncode == 130, output
    assert f"--resume {run}" in output  # tells the user how to continue
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)  # saved at the next safe point: after step 5
    assert ckpt["order"] is not None and len(ckpt["order"]) == 1438  # that epoch's sample order
    status = RunDir(run).read_status()
    assert status["status"] == "interrupted" and status["stop_reason"] == "interrupted"
    assert run_info(run).status == "interrupted"

    res = invoke("run", "--resume", run, "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert "epoch 2, step 6" in res.output
    assert_same_run(reference, run)
    assert len(RunDir(run).read_status()["resumed"]) == 1


def test_resume_with_more_epochs_states_what_happens_to_the_schedule(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    res = invoke("run", "--resume", run, "--set", "epochs=4", "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert "epochs changed from 3 to 4" in res.output
    assert "onecycle schedule is re-planned for 4 epochs" in res.output
    rows = metrics(run)
    assert len(rows) == 4 and rows[:3] == metrics(reference)
    assert "epochs: 4" in (run / "recipe.yaml").read_text()
    assert RunDir(run).read_status()["epochs"] == 4


def test_resume_refuses_changes_that_would_make_another_run(reference: Path) -> None:
    res = invoke("run", "--resume", reference, "--set", "optimizer.lr=0.1")
    assert res.exit_code == 2
    assert "cannot change this when resuming" in res.output


def test_resume_refuses_a_run_whose_process_is_still_alive(reference: Path, tmp_path: Path) -> None:
    import json

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        status = RunDir(run).read_status()
        status.update(status="running", pid=alive.pid)
        (run / "status.json").write_text(json.dumps(status))
        res = invoke("run", "--resume", run)
        assert res.exit_code == 1
        assert f"still running (process {alive.pid})" in res.output
    finally:
        alive.kill()
        alive.wait()


def test_resume_of_a_finished_run_has_nothing_to_do(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    res = invoke("run", "--resume", run, "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output
    assert metrics(run) == metrics(reference)


# ------------------------------------------------------------------------ unsafe checkpoints
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_by_resume_eval_and_predict(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    marker = tmp_path / "code-ran"
    for name in ("last.pt", "best.pt"):
        torch.save({"model": _Payload(marker), "epoch": 1}, run / name)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    for args in (
        ("run", "--resume", run),
        ("eval", run),
        ("eval", run, "--checkpoint", "last"),
        ("predict", run, image),
    ):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert "refused to load checkpoint" in res.output, res.output
        assert "system" in res.output  # names what it would have called
    assert not marker.exists()


# ------------------------------------------------------------------------ non-finite loss
def test_non_finite_loss_names_epoch_and_step_and_keeps_last_good_checkpoint(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("MNISTKIT_NAN_AT", "2:3")
    res = invoke("run", recipe_file, "--out", run, "--progress", "plain")
    assert res.exit_code == 1, res.output
    assert "loss became nan at epoch 2, step 3" in res.output
    status = RunDir(run).read_status()
    assert status["status"] == "failed" and "epoch 2, step 3" in status["error"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert len(RunDir(run).read_metrics()) == 1


def test_huge_learning_rate_stops_with_a_message(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", PLAIN)
    res = invoke("run", recipe, "--out", tmp_path / "run", "--set", "optimizer.lr=1e6")
    assert res.exit_code == 1, res.output
    assert "loss became" in res.output and "epoch 1, step" in res.output
    assert "Lower optimizer.lr" in res.output


# ------------------------------------------------------------------------ training options
def _run(tmp_path: Path, *sets: str, name: str = "run") -> Path:
    recipe = tmp_path / "plain.yaml"
    if not recipe.exists():
        write(recipe, PLAIN)
    out = tmp_path / name
    args: list[Any] = ["run", recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    return out


def test_validation_split_adds_val_columns_and_picks_best_by_val_acc(tmp_path: Path) -> None:
    run = _run(tmp_path, "data.val_split=0.2", "epochs=3")
    rows = RunDir(run).read_metrics()
    assert all(r["val_loss"] is not None and r["val_acc"] is not None for r in rows)
    status = RunDir(run).read_status()
    assert status["best_metric"] == "val_acc"
    best = max(rows, key=lambda r: r["val_acc"])  # first of equals, like the loop
    assert status["best_epoch"] == best["epoch"]
    assert load_checkpoint(run / "best.pt")["epoch"] == best["epoch"]


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    # train_loss falls every epoch, so with mode max it never "improves" after epoch 1.
    run = _run(
        tmp_path,
        "epochs=6",
        "train.early_stopping.patience=2",
        "train.early_stopping.metric=train_loss",
        "train.early_stopping.mode=max",
    )
    assert len(RunDir(run).read_metrics()) == 3
    status = RunDir(run).read_status()
    assert status["status"] == "finished"
    assert status["stop_reason"].startswith("early stopping: train_loss")


@pytest.mark.parametrize(
    ("scheduler", "check"),
    [
        ("{name: step, step_size: 1, gamma: 0.5}", lambda lrs: lrs == [0.05, 0.025, 0.0125]),
        (
            "{name: cosine, min_lr_ratio: 0.1}",
            lambda lrs: lrs[0] > lrs[1] > lrs[2] and math.isclose(lrs[2], 0.005, rel_tol=1e-6),
        ),
        ("{name: onecycle, max_lr: 0.1}", lambda lrs: lrs[0] > 0.09 and lrs[2] < 1e-3),
    ],
)
def test_schedulers_change_the_learning_rate(tmp_path: Path, scheduler: str, check: Any) -> None:
    run = _run(tmp_path, f"scheduler={scheduler}", "epochs=3")
    lrs = [r["lr"] for r in RunDir(run).read_metrics()]
    assert check(lrs), lrs


def test_plateau_scheduler_steps_on_its_metric() -> None:
    from mnistkit.build.components import build_schedule
    from mnistkit.recipe.schema import load_recipe_text
    from mnistkit.registry import registries

    recipe = load_recipe_text(PLAIN, overrides=["scheduler={name: plateau, patience: 0, factor: 0.5}"])
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.05)
    schedule = build_schedule(recipe, opt, 10, registries())
    for loss in (1.0, 1.0, 1.0):  # test_loss (the default metric) stops improving
        schedule.after_epoch({"test_loss": loss, "train_loss": 0.0})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)


@pytest.mark.parametrize(
    ("metric", "values", "lrs"),
    [
        # Accuracies: higher is better. Rising means improving (lr kept), falling means not.
        ("test_acc", (0.5, 0.6, 0.7, 0.8), (0.05, 0.05, 0.05, 0.05)),
        ("test_acc", (0.8, 0.7, 0.6, 0.5), (0.05, 0.05, 0.025, 0.0125)),
        # Losses: lower is better.
        ("test_loss", (0.8, 0.7, 0.6, 0.5), (0.05, 0.05, 0.05, 0.05)),
        ("test_loss", (0.5, 0.6, 0.7, 0.8), (0.05, 0.05, 0.025, 0.0125)),
    ],
    ids=["acc-rising", "acc-falling", "loss-falling", "loss-rising"],
)
def test_plateau_scheduler_follows_its_metric_direction(
    metric: str, values: tuple[float, ...], lrs: tuple[float, ...]
) -> None:
    from mnistkit.build.components import build_schedule
    from mnistkit.recipe.schema import load_recipe_text
    from mnistkit.registry import registries

    recipe = load_recipe_text(
        PLAIN, overrides=[f"scheduler={{name: plateau, metric: {metric}, patience: 0, factor: 0.5}}"]
    )
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.05)
    schedule = build_schedule(recipe, opt, 10, registries())
    seen = []
    for v in values:
        seen.append(opt.param_groups[0]["lr"])  # the lr this epoch trained with
        schedule.after_epoch({metric: v, "train_loss": 0.0})
    assert tuple(seen) == pytest.approx(lrs)


def test_plateau_scheduler_in_a_run_halves_the_lr_exactly_after_epochs_without_improvement(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path, "scheduler={name: plateau, metric: test_acc, patience: 0, factor: 0.5}", "epochs=4")
    rows = RunDir(run).read_metrics()
    # What ReduceLROnPlateau (mode max, relative threshold 1e-4, patience 0) must do with the
    # accuracies this run measured: keep the lr after a new best, halve it after any other epoch.
    lr, best, expected = 0.05, -math.inf, []
    for r in rows:
        expected.append(lr)
        if r["test_acc"] > best * (1 + 1e-4):
            best = r["test_acc"]
        else:
            lr /= 2
    assert [r["lr"] for r in rows] == pytest.approx(expected)


def test_weight_decay_reaches_the_optimizer(tmp_path: Path) -> None:
    run = _run(tmp_path, "optimizer.weight_decay=0.001", "epochs=1")
    groups = load_checkpoint(run / "last.pt")["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.001


def test_grad_clipping_limits_each_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def counting(params: Any, max_norm: float, *a: Any, **kw: Any) -> Any:
        calls.append(max_norm)
        return clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting)
    clipped = _run(tmp_path, "train.grad_clip=1e-6", "epochs=1", name="clipped")
    assert calls and set(calls) == {1e-6} and len(calls) == 23  # every step (1,438 / 64)
    free = _run(tmp_path, "epochs=1", name="free")
    # With the update norm capped near zero the model barely moves from chance level.
    assert (
        RunDir(clipped).read_metrics()[0]["train_loss"] > 2.0 > RunDir(free).read_metrics()[0]["train_loss"]
    )


def test_tensorboard_logs_scalars_per_epoch(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, "train.tensorboard=true")
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss/train", "loss/test", "accuracy/test", "lr"} <= set(tags)
    events = acc.Scalars("accuracy/test")
    assert [e.step for e in events] == [1, 2]
    assert events[-1].value == pytest.approx(RunDir(run).read_metrics()[-1]["test_acc"])


def test_tensorboard_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    recipe = write(tmp_path / "r.yaml", PLAIN)
    res = invoke("run", recipe, "--out", tmp_path / "run", "--set", "train.tensorboard=true")
    assert res.exit_code == 1
    assert "tensorboard package is not installed" in res.output
    assert not (tmp_path / "run").exists()  # fails before creating the run directory
