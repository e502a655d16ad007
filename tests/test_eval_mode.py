"""Evaluation runs the model in eval mode (issue 17): dropout off, BatchNorm on its running statistics.

A model with dropout and BatchNorm on the bundled digits, with a validation split:

* the test metrics a run writes to metrics.csv after an epoch are those a separate ``mnistkit
  eval`` of that epoch's checkpoint computes on the same test split (dropout left on, or
  BatchNorm normalizing with batch statistics, would give other numbers);
* BatchNorm's running statistics change while the model trains and never while it is evaluated
  (val and test, every epoch), and what is checkpointed is what was evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import invoke, train

from mnistkit.runs.directory import RunDir

RECIPE = """\
name: eval-mode
seed: 3
data: {dataset: digits, batch_size: 64, val_split: 0.2}
model:
  layers:
    - {type: flatten}
    - {type: linear, out_features: 48}
    - {type: batchnorm1d}
    - {type: relu}
    - {type: dropout, p: 0.5}
    - {type: linear, out_features: 10}
optimizer: {name: adam, lr: 0.01}
epochs: 2
train: {progress: none, threads: 1, plots: false}
"""

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm buffer of ``model``, copied, by its state_dict name."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for buf in BN_BUFFERS:
                value = getattr(module, buf)
                assert value is not None, f"{name}.{buf} is None: BatchNorm without running statistics"
                state[f"{name}.{buf}"] = value.detach().clone()
    return state


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The run, and for every evaluation the training loop made: BatchNorm buffers before and
    after it, and whether the model was in train mode while it ran its batches."""
    import mnistkit.training.loop as loop

    real = loop.evaluate
    calls: list[dict[str, Any]] = []

    def watched(model: torch.nn.Module, split: Any, *args: Any, **kwargs: Any) -> Any:
        modes: list[bool] = []
        hook = model.register_forward_pre_hook(lambda m, _inp: modes.append(m.training))
        before = _bn_state(model)
        try:
            result = real(model, split, *args, **kwargs)
        finally:
            hook.remove()
        calls.append({"before": before, "after": _bn_state(model), "modes": modes, "n": len(split.y)})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "evaluate", watched)
        run = train(tmp_path_factory.mktemp("evalmode"), RECIPE)
    return run, calls


def _eval(run: Path, checkpoint: str) -> dict[str, Any]:
    res = invoke("eval", run, "--checkpoint", checkpoint)
    assert res.exit_code == 0, res.output
    return json.loads(RunDir(run).eval_json_path(checkpoint).read_text())


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_metrics_of_an_epoch_equal_a_separate_eval_of_its_checkpoint(
    watched_run: tuple[Path, list[dict[str, Any]]], checkpoint: str
) -> None:
    run, _ = watched_run
    rows = RunDir(run).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    result = _eval(run, checkpoint)
    assert result["split"] == "test" and result["checkpoint_step"] == 0
    row = rows[result["checkpoint_epoch"] - 1]
    assert result["samples"] == 359  # digits' test split: 20 % of each class of 1,797
    # Accuracy exactly; the loss to float rounding (summation order may differ).
    assert result["accuracy"] == row["test_acc"]
    assert result["loss"] == pytest.approx(row["test_loss"], rel=1e-6, abs=1e-9)


def test_batchnorm_statistics_change_in_training_and_not_in_evaluation(
    watched_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    run, calls = watched_run
    # Two epochs, each evaluating val (288 of 1,438 training images) then test (359).
    assert [c["n"] for c in calls] == [288, 359, 288, 359]
    for i, call in enumerate(calls):
        assert call["modes"] and not any(call["modes"]), f"evaluation {i} ran the model in train mode"
        for key, value in call["before"].items():
            assert torch.equal(call["after"][key], value), f"evaluation {i} changed {key}"
    # Training moved them: away from BatchNorm's initial 0 / 1 in epoch 1, and again in epoch 2.
    first, second = calls[0]["before"], calls[2]["before"]
    mean_keys = [k for k in first if k.endswith("running_mean")]
    assert mean_keys
    for key in mean_keys:
        var_key = key.replace("running_mean", "running_var")
        assert not torch.equal(first[key], torch.zeros_like(first[key])), key
        assert not torch.equal(first[var_key], torch.ones_like(first[var_key])), var_key
        assert not torch.equal(second[key], first[key]), key
        assert not torch.equal(second[var_key], first[var_key]), var_key
    # 1,150 training images in batches of 64: 18 steps per epoch, one update each.
    tracked = [k for k in first if k.endswith("num_batches_tracked")]
    assert [int(first[k]) for k in tracked] == [18] and [int(second[k]) for k in tracked] == [36]
    # What last.pt holds is what the last evaluation used.
    saved = torch.load(run / "last.pt", weights_only=True)["model"]
    for key, value in calls[-1]["after"].items():
        assert torch.equal(saved[key], value), key
