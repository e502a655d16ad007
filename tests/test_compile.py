"""``train.compile``: the compiled training step trains the same model as the eager one.

The compiled step (training/step.py) runs normalization, forward, loss and backward through
torch.compile. Its kernels add and multiply in another order than eager PyTorch's, so the two
runs agree to rounding, not bit for bit: per epoch, train and test loss within 1e-4 relative and
test accuracy within one test sample (measured gap on this recipe: ~2e-8 relative, accuracy
equal). A compiled run resumed mid-epoch must equal the uninterrupted compiled run exactly.
Compiling takes 10-80 s on the 2-core machine, so the compiled run is made once per module.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import mnistkit.session as runner
import mnistkit.training.step as step_module
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.session import RunOptions, RunResult
from mnistkit.training.step import AUTO_MIN_STEPS, decide_compile, find_cxx

# 400 samples at batch 32: 12 full batches and a partial one of 16 (two graphs to compile).
TINY = """\
name: tiny
seed: 3
data: {dataset: digits, limit: 400, test_limit: 200, batch_size: 32}
model: {hidden: [32]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.5}
epochs: 3
train: {device: cpu, threads: 1, plots: false, checkpoint: true}
"""
N_TEST = 200
CPU = torch.device("cpu")


def train(out: Path, *overrides: str, resume: Path | None = None) -> RunResult:
    recipe = load_recipe_text(TINY, "tiny.yaml", list(overrides))
    return runner.run(recipe, RunOptions(out=None if resume else out, resume=resume, progress="plain"))


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MNISTKIT_KILL_AT", "MNISTKIT_NAN_AT", "MNISTKIT_RAISE_AT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_cxx() is None:
        pytest.skip("no C++ compiler: torch.compile cannot run on this CPU")
    out = tmp_path_factory.mktemp("compiled") / "run"
    train(out, "train.compile=true")
    return out


def test_compiled_run_reaches_the_eager_run_metrics(compiled: Path, tmp_path: Path) -> None:
    status = json.loads((compiled / "status.json").read_text())
    assert status["compile_seconds"] > 0  # it really compiled, and reported the time apart
    eager = tmp_path / "eager"
    train(eager, "train.compile=false")
    assert json.loads((eager / "status.json").read_text())["compile_seconds"] is None
    a, b = rows(compiled), rows(eager)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4), (ra["epoch"], key)
        assert abs(float(ra["test_acc"]) - float(rb["test_acc"])) <= 1 / N_TEST, ra["epoch"]
        assert float(ra["train_acc"]) == pytest.approx(float(rb["train_acc"]), abs=2 / 400)


def test_compiled_run_interrupted_mid_epoch_resumes_exactly(
    compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("MNISTKIT_KILL_AT", "2:5:INT")  # a Ctrl-C after step 5 of epoch 2
    first = train(out, "train.compile=true")
    monkeypatch.delenv("MNISTKIT_KILL_AT")
    assert first.status == "interrupted"
    assert len(rows(out)) == 1
    train(out, "train.compile=true", resume=out)
    assert untimed(rows(out)) == untimed(rows(compiled))  # every column as written, exactly


def untimed(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in table]


def test_without_a_cxx_compiler_the_run_trains_eagerly_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(step_module, "find_cxx", lambda: None)  # pretend: no g++/clang++
    out = tmp_path / "run"
    result = train(out, "train.compile=true", "epochs=1")
    printed = capsys.readouterr().out
    assert "no C++ compiler found" in printed and "training eagerly" in printed
    assert result.status == "finished"
    assert json.loads((out / "status.json").read_text())["compile_seconds"] is None


def test_find_cxx_looks_at_cxx_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no compiler anywhere
    assert find_cxx() is None
    fake = tmp_path / "clang++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert find_cxx() == str(fake)
    other = tmp_path / "bin" / "my-c++"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(other.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(other))
    assert find_cxx() == str(other)
    assert os.environ["PATH"] == str(tmp_path)


def test_auto_compiles_only_runs_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_module, "find_cxx", lambda: "/usr/bin/g++")
    short = decide_compile("auto", AUTO_MIN_STEPS - 1, CPU, distributed=False)
    long = decide_compile("auto", AUTO_MIN_STEPS, CPU, distributed=False)
    assert not short.compiled and "auto" in short.reason and f"{AUTO_MIN_STEPS - 1:,}" in short.reason
    assert long.compiled and "auto" in long.reason
    assert decide_compile(True, 1, CPU, distributed=False).compiled
    assert not decide_compile(False, AUTO_MIN_STEPS, CPU, distributed=False).compiled
    assert not decide_compile(True, AUTO_MIN_STEPS, CPU, distributed=True).compiled
