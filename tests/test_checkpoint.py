"""Tests for mnistkit.training.checkpoint: atomic writes, crash safety, safe loads, scheduler states."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim import SGD, AdamW, lr_scheduler

from mnistkit.errors import RunError
from mnistkit.training.checkpoint import (
    CRASH_ENV,
    load_checkpoint,
    plain_scheduler_state,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Deep equality for nested plain data with tensors (exact, dtype-checked)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def _trained(optimizer_cls: type, sched_fn: Any, steps: int = 3) -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    kwargs = {"momentum": 0.9} if optimizer_cls is SGD else {}
    opt = optimizer_cls(model.parameters(), lr=0.1, **kwargs)
    sched = sched_fn(opt)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)
        else:
            sched.step()
    return model, opt, sched


class _Mult:
    """A callable object lr lambda, like mnistkit.build.schedules uses."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> float:
        return 1.0 - step / self.total


SCHEDULERS = {
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
    "OneCycleLR-linear": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=10, anneal_strategy="linear"
    ),
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "LambdaLR-lambda": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
    "LambdaLR-object": lambda o: lr_scheduler.LambdaLR(o, _Mult(10)),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=1),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 4]),
}


def _full_state(optimizer_cls: type = SGD, sched_name: str = "OneCycleLR") -> dict[str, Any]:
    model, opt, sched = _trained(optimizer_cls, SCHEDULERS[sched_name])
    gen = torch.Generator().manual_seed(123)
    return {
        "epoch": 3,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": plain_scheduler_state(sched),
        "torch_rng": torch.get_rng_state(),
        "loader_rng": gen.get_state(),
        "recipe": {"name": "mlp", "optimizer": {"name": "sgd", "lr": 0.1}, "layers": [64, 32]},
        "rows": [
            {"epoch": 1, "train_loss": 0.5, "test_acc": 0.9, "val_acc": None},
            {"epoch": 2, "train_loss": 0.25, "test_acc": 0.95, "val_acc": None},
        ],
        "best": (2, 0.95, "test_acc"),
        "flag": True,
    }


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("optimizer_cls", [SGD, AdamW])
def test_full_state_round_trips_with_weights_only(tmp_path: Path, optimizer_cls: type) -> None:
    state = _full_state(optimizer_cls)
    if optimizer_cls is SGD:  # momentum buffers are really in there
        assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    # Nothing but the checkpoint is left in the directory (no temp files).
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_loaded_state_restores_model_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    model, opt, sched = _trained(SGD, SCHEDULERS["OneCycleLR"])
    save_checkpoint(
        tmp_path / "c.pt",
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": plain_scheduler_state(sched),
            "rng": torch.get_rng_state(),
        },
    )
    expected_next = torch.rand(3)
    loaded = load_checkpoint(tmp_path / "c.pt")

    model2, opt2, sched2 = _trained(SGD, SCHEDULERS["OneCycleLR"], steps=0)
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    torch.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected_next)
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert sched2.get_last_lr() == sched.get_last_lr()
    # Stepping both further gives the same learning rates (the schedule really resumed).
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_state_dicts_load_under_weights_only(tmp_path: Path, name: str) -> None:
    _, opt, sched = _trained(SGD, SCHEDULERS[name])
    raw = sched.state_dict()
    # The raw state_dict loads as it is with this torch (OneCycleLR's anneal_func was a
    # function before torch 2.4; it is the string _anneal_func_type now).
    torch.save(raw, tmp_path / "raw.pt")
    torch.load(tmp_path / "raw.pt", weights_only=True)
    plain = plain_scheduler_state(sched)
    save_checkpoint(tmp_path / "s.pt", {"scheduler": plain})
    loaded = load_checkpoint(tmp_path / "s.pt")["scheduler"]

    _, opt2, sched2 = _trained(SGD, SCHEDULERS[name], steps=0)
    sched2.load_state_dict(loaded)
    assert sched2.last_epoch == sched.last_epoch
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_lambdalr_state_keeps_callable_object_attributes() -> None:
    _, _, plain_fn = _trained(SGD, SCHEDULERS["LambdaLR-lambda"])
    _, _, obj_fn = _trained(SGD, SCHEDULERS["LambdaLR-object"])
    # Plain functions/lambdas are not saved at all; callable objects save their __dict__.
    assert plain_scheduler_state(plain_fn)["lr_lambdas"] == [None]
    assert plain_scheduler_state(obj_fn)["lr_lambdas"] == [{"total": 10}]


def test_plain_scheduler_state_drops_non_plain_entries() -> None:
    class Fake:
        def state_dict(self) -> dict[str, Any]:
            return {
                "anneal_func": print,  # what OneCycleLR held before torch 2.4
                "milestones": Counter({2: 1}),  # MultiStepLR; refused before torch 2.4
                "lr_lambdas": [{"a": 1}, {"f": print}],
                "last_epoch": 4,
                "base_lrs": [0.1],
                "inf": float("inf"),
            }

    assert plain_scheduler_state(Fake()) == {
        "lr_lambdas": [{"a": 1}, None],
        "last_epoch": 4,
        "base_lrs": [0.1],
        "inf": float("inf"),
    }


# --------------------------------------------------------------------------- atomicity


def test_overwrite_replaces_and_cleans_stale_tmp(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    # A temp file left by a writer that no longer exists (pid far above pid_max).
    stale = tmp_path / ".last.pt.tmp-999999999"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".best.pt.tmp-999999999"  # another checkpoint's: not ours to delete
    other.write_bytes(b"x")
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2}
    assert not stale.exists()
    assert other.exists()


def test_live_writers_tmp_is_left_alone(tmp_path: Path) -> None:
    live = tmp_path / f".last.pt.tmp-{os.getppid()}"
    live.write_bytes(b"x")
    save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert live.exists()


def test_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    assert load_checkpoint(path) == {"epoch": 1}


def test_kill_9_mid_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    code = textwrap.dedent(
        f"""
        import os, torch
        from pathlib import Path
        from mnistkit.training.checkpoint import save_checkpoint
        path = Path({str(path)!r})
        torch.manual_seed(0)
        save_checkpoint(path, {{"epoch": 1, "w": torch.arange(50000.0)}})
        os.environ[{CRASH_ENV!r}] = "last.pt"
        save_checkpoint(path, {{"epoch": 2, "w": torch.zeros(50000)}})
        print("survived")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(CRASH_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "survived" not in proc.stdout

    # The half-written temp file is there, under its temp name only.
    tmps = list(tmp_path.glob(".last.pt.tmp-*"))
    assert len(tmps) == 1
    assert 0 < tmps[0].stat().st_size < path.stat().st_size

    state = load_checkpoint(path)
    assert state["epoch"] == 1
    assert torch.equal(state["w"], torch.arange(50000.0))

    # The next save (a resumed run) removes the dead writer's temp file.
    save_checkpoint(path, {"epoch": 3})
    assert not list(tmp_path.glob(".last.pt.tmp-*"))
    assert load_checkpoint(path) == {"epoch": 3}


def test_crash_hook_only_fires_for_its_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "last.pt")
    save_checkpoint(tmp_path / "best.pt", {"epoch": 1})  # would SIGKILL pytest if it fired
    assert load_checkpoint(tmp_path / "best.pt") == {"epoch": 1}


def test_write_failure_is_run_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "last.pt", {"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_failure_after_the_tmp_was_written_removes_it(tmp_path: Path) -> None:
    # The temp file is complete, then the rename onto "last.pt" fails (a folder is in the way).
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(RunError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert (tmp_path / "last.pt").is_dir()


def test_interrupt_while_writing_removes_the_tmp_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the new file is being flushed

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path) == {"epoch": 1}


def test_refuses_to_write_state_a_safe_load_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    with pytest.raises(RunError) as err:
        save_checkpoint(path, {"rows": [{"test_acc": np.float64(0.9)}]})
    msg = str(err.value)
    assert str(path) in msg
    assert "state['rows'][0]['test_acc'] is a numpy.float64" in msg
    assert not path.exists()
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- refused / broken


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path) -> None:
        self.marker = marker


def _assert_refused(path: Path, marker: Path) -> None:
    with pytest.raises(RunError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert not marker.exists(), "loading ran code from the checkpoint"
    assert str(path) in msg
    assert "refused" in msg
    assert "objects other than tensors and plain data" in msg
    assert "could run code" in msg
    assert "written by mnistkit" in msg


def test_code_executing_torch_save_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil(marker)}, path)
    _assert_refused(path, marker)
    assert "os.system" in str(_exc(path)) or "posix.system" in str(_exc(path))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_code_executing_plain_pickle_is_refused(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"payload": _Evil(marker)}, f, protocol=protocol)
    _assert_refused(path, marker)


def test_numpy_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "np.pt"
    torch.save({"x": np.arange(3)}, path)
    _assert_refused(path, tmp_path / "nothing")


def _exc(path: Path) -> RunError:
    try:
        load_checkpoint(path)
    except RunError as e:
        return e
    raise AssertionError("no RunError")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "x" / "last.pt"
    msg = str(_exc(path))
    assert str(path) in msg
    assert "does not exist" in msg
    assert "finished an epoch" in msg


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="truncated-half"),
        pytest.param(lambda good: good[:-10], id="truncated-end"),
        pytest.param(lambda good: b"", id="empty"),
        pytest.param(lambda good: os.urandom(4096), id="random"),
        pytest.param(lambda good: b"hello, world\n", id="text"),
        pytest.param(lambda good: pickle.dumps({"a": 1}), id="plain-pickle-not-torch"),
    ],
)
def test_corrupt_files_are_run_errors(tmp_path: Path, content: Any) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(2000), "epoch": 1})
    path = tmp_path / "bad.pt"
    path.write_bytes(content(good.read_bytes()))
    msg = str(_exc(path))
    assert str(path) in msg
    assert "corrupt" in msg or "refused" in msg or "not a dict" in msg


def test_truncated_checkpoint_says_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(2000)})
    path = tmp_path / "last.pt"
    path.write_bytes(good.read_bytes()[:1000])
    msg = str(_exc(path))
    assert "truncated or corrupt" in msg and str(path) in msg


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "not a file" in str(_exc(tmp_path))


def test_non_dict_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    assert "not a dict" in str(_exc(path))


def test_text_and_plot_writes_are_atomic_and_clean_up_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mnistkit.fsutil: the old file survives a writer that fails halfway; no temp file is left."""
    from mnistkit.evaluation.plots import plot_curves
    from mnistkit.fsutil import atomic_path, atomic_write_text

    text = tmp_path / "status.json"
    atomic_write_text(text, "old\n")
    with pytest.raises(RuntimeError), atomic_path(text) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert text.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]

    png = tmp_path / "plots" / "curves.png"
    png.parent.mkdir()
    png.write_bytes(b"previous plot")
    rows = [{"epoch": 1, "train_loss": 0.5, "test_loss": 0.4, "test_acc": 0.9}]
    from matplotlib.figure import Figure

    real_savefig = Figure.savefig

    def dies_halfway(self: Figure, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        plot_curves(rows, png)
    assert png.read_bytes() == b"previous plot"  # savefig wrote to a temp file, not over the plot
    assert sorted(p.name for p in png.parent.iterdir()) == ["curves.png"]
    monkeypatch.setattr(Figure, "savefig", real_savefig)
    plot_curves(rows, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
