"""Which epoch is "best", when training stops, and what --resume and --checkpoint pick (issue 8).

On the digits data every metric improves until the last epoch, so a rule that reads a loss the
wrong way round, ignores the validation split, or forgets its state on resume gives the same
answer as the right one. Here the per-epoch test/validation metrics are scripted (the loop's
``evaluate`` is replaced by a list of values), so the best epoch is deliberately *not* the last;
everything else is real: the training loop, its best/early-stopping rules, the checkpoints, the
status file, and ``runs``/``eval``/``predict`` reading them through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import mnistkit.training.loop as loop
from mnistkit.cli.app import app
from mnistkit.errors import RunError
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import best_metric_of, run_info
from mnistkit.training.checkpoint import load_checkpoint
from mnistkit.training.evaluation import Evaluation

TEST_N = 50  # data.test_limit: how the scripted evaluate tells the test split from validation
# 128 training images / 64 = 2 steps per epoch: the weights change, the run takes ~0.1 s/epoch.
RECIPE = f"""\
name: scripted
seed: 0
data: {{dataset: digits, batch_size: 64, limit: 128, test_limit: {TEST_N}}}
model: {{hidden: [16]}}
optimizer: {{name: sgd, lr: 0.05}}
epochs: 4
train: {{plots: false, progress: none, threads: 1}}
"""


def invoke(*args: Any) -> Any:
    """The CLI in this process (no interpreter start-up); never raises on a non-zero exit."""
    return CliRunner().invoke(app, [str(a) for a in args])


def script_metrics(
    mp: pytest.MonkeyPatch,
    test: list[tuple[float, float]],
    val: list[tuple[float, float]] | None = None,
) -> None:
    """Make the loop's evaluation return these (loss, accuracy) pairs, one per epoch, in order."""
    seqs = {"test": iter(test), "val": iter(val or [])}

    def scripted(model: Any, split: Any, batch_size: int, **kwargs: Any) -> Evaluation:
        loss, acc = next(seqs["test" if len(split.y) == TEST_N else "val"])
        return Evaluation(loss, acc, None)

    mp.setattr(loop, "evaluate", scripted)


def train(tmp_path: Path, *sets: str, out: str = "run", resume: Path | None = None) -> Path:
    recipe = tmp_path / "scripted.yaml"
    if not recipe.exists():
        recipe.write_text(RECIPE, encoding="utf-8")
    args: list[Any] = ["run", "--resume", resume] if resume else ["run", recipe, "--out", tmp_path / out]
    for s in sets:
        args += ["--set", s]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    return resume or tmp_path / out


def accs(*values: float) -> list[tuple[float, float]]:
    return [(1.0, a) for a in values]


def losses(*values: float) -> list[tuple[float, float]]:
    # Accuracies rise every epoch, so "best by accuracy" would be the last epoch.
    return [(v, 0.5 + 0.1 * i) for i, v in enumerate(values)]


# ----------------------------------------------------------------------- best checkpoint
@pytest.fixture(scope="module")
def loss_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best_metric: test_loss with test losses 0.9, 0.3, 0.5, 0.7: best epoch 2 of 4."""
    tmp = tmp_path_factory.mktemp("loss")
    with pytest.MonkeyPatch.context() as mp:
        script_metrics(mp, losses(0.9, 0.3, 0.5, 0.7))
        return train(tmp, "train.best_metric=test_loss")


def test_best_checkpoint_by_a_loss_is_the_lowest_loss(loss_run: Path) -> None:
    status = RunDir(loss_run).read_status()
    assert (status["best_metric"], status["best"], status["best_epoch"]) == ("test_loss", 0.3, 2)
    assert load_checkpoint(loss_run / "best.pt")["epoch"] == 2
    assert load_checkpoint(loss_run / "last.pt")["epoch"] == 4


def test_best_checkpoint_by_accuracy_is_the_highest_accuracy(tmp_path: Path, monkeypatch) -> None:
    script_metrics(monkeypatch, accs(0.5, 0.9, 0.7, 0.6))
    run = train(tmp_path)  # best_metric: auto, no validation split: test_acc
    status = RunDir(run).read_status()
    assert (status["best_metric"], status["best"], status["best_epoch"]) == ("test_acc", 0.9, 2)
    assert load_checkpoint(run / "best.pt")["epoch"] == 2


def test_runs_ranks_a_loss_lower_is_better(loss_run: Path) -> None:
    info = run_info(loss_run)
    assert (info.best_metric, info.best, info.best_epoch) == ("test_loss", 0.3, 2)
    res = invoke("runs", loss_run.parent)
    assert res.exit_code == 0, res.output
    assert "test_loss 0.3000 (ep 2)" in res.output


def test_runs_ranks_an_accuracy_higher_is_better(tmp_path: Path, monkeypatch) -> None:
    script_metrics(monkeypatch, accs(0.5, 0.9, 0.7, 0.6))
    info = run_info(train(tmp_path))
    assert (info.best_metric, info.best, info.best_epoch) == ("test_acc", 0.9, 2)


def test_best_metric_auto_uses_the_validation_split(tmp_path: Path, monkeypatch) -> None:
    # Validation accuracy peaks at epoch 2, test accuracy at epoch 4: auto means val_acc.
    script_metrics(monkeypatch, test=accs(0.5, 0.6, 0.7, 0.95), val=accs(0.5, 0.9, 0.6, 0.55))
    run = train(tmp_path, "data.val_split=0.25")
    status = RunDir(run).read_status()
    assert (status["best_metric"], status["best"], status["best_epoch"]) == ("val_acc", 0.9, 2)
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    info = run_info(run)
    assert (info.best_metric, info.best, info.best_epoch) == ("val_acc", 0.9, 2)


# ----------------------------------------------------------------------- early stopping
@pytest.mark.parametrize(
    ("metric", "script", "epochs_run"),
    [
        # A loss falling every epoch is improving: never stop.
        ("test_loss", losses(1.0, 0.8, 0.6, 0.4, 0.3, 0.2), 6),
        # Best at epoch 2, worse at 3 and 4: patience 2 runs out after epoch 4.
        ("test_loss", losses(1.0, 0.5, 0.6, 0.7, 0.8, 0.9), 4),
        ("test_acc", accs(0.5, 0.6, 0.7, 0.8, 0.85, 0.9), 6),
        ("test_acc", accs(0.5, 0.9, 0.8, 0.7, 0.6, 0.5), 4),
    ],
    ids=["loss-improving", "loss-worsening", "acc-improving", "acc-worsening"],
)
def test_early_stopping_follows_the_metric_direction(
    tmp_path: Path, monkeypatch, metric: str, script: list[tuple[float, float]], epochs_run: int
) -> None:
    script_metrics(monkeypatch, script)
    run = train(tmp_path, "epochs=6", f"train.early_stopping={{metric: {metric}, patience: 2}}")
    assert len(RunDir(run).read_metrics()) == epochs_run
    reason = RunDir(run).read_status()["stop_reason"]
    if epochs_run < 6:
        assert reason == f"early stopping: {metric} has not improved for 2 epoch(s)"
    else:
        assert reason == "finished"


# ----------------------------------------------------------------------- resume
def test_resume_keeps_best_and_early_stopping_count(tmp_path: Path, monkeypatch) -> None:
    # First session: best test_loss at epoch 1, then two worse epochs (2 of patience 3 used).
    sets = ("train.best_metric=test_loss", "train.early_stopping={metric: test_loss, patience: 3}")
    script_metrics(monkeypatch, losses(0.5, 0.7, 0.8))
    run = train(tmp_path, "epochs=3", *sets)
    assert RunDir(run).read_status()["best_epoch"] == 1
    # Resumed for more epochs: epoch 4 is worse than epoch 1 again, the third bad epoch in a
    # row, so it stops there; best stays epoch 1 (a fresh state would stop at epoch 6 and call
    # epoch 4 the best).
    script_metrics(monkeypatch, losses(0.9, 0.95, 0.97, 0.99, 1.0))
    train(tmp_path, "epochs=8", resume=run)
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3, 4]
    status = RunDir(run).read_status()
    assert status["stop_reason"] == "early stopping: test_loss has not improved for 3 epoch(s)"
    assert (status["best"], status["best_epoch"]) == (0.5, 1)
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert load_checkpoint(run / "last.pt")["bad_epochs"] == 3


# ----------------------------------------------------------------------- --checkpoint last / best
@pytest.mark.parametrize(("checkpoint", "epoch"), [("last", 4), ("best", 2)])
def test_eval_loads_the_checkpoint_asked_for(loss_run: Path, checkpoint: str, epoch: int) -> None:
    res = invoke("eval", loss_run, "--checkpoint", checkpoint)
    assert res.exit_code == 0, res.output
    result = json.loads((loss_run / f"eval-{checkpoint}.json").read_text())
    assert (result["checkpoint_file"], result["checkpoint_epoch"]) == (f"{checkpoint}.pt", epoch)
    assert f"after epoch {epoch}" in res.output


def test_predict_loads_the_checkpoint_asked_for(loss_run: Path, tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    image = tmp_path / "digit.png"
    pixels = load_digits().images[0] * (255 / 16)  # the 8x8 digit as 0..255 grey
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(image)
    probs = {}
    for checkpoint, epoch in (("last", 4), ("best", 2)):
        res = invoke("predict", loss_run, image, "--checkpoint", checkpoint, "--json", "--top", "10")
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert (out["checkpoint"], out["checkpoint_when"]) == (checkpoint, f"after epoch {epoch}")
        probs[checkpoint] = {t["class"]: t["probability"] for t in out["predictions"][0]["top"]}
    assert probs["last"] != probs["best"]  # two epochs of training apart: different weights


# ----------------------------------------------------------------------- a missing checkpoint
def test_a_missing_checkpoint_says_why_and_offers_only_one_that_exists(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.recipe_path.write_text("name: x\n", encoding="utf-8")
    # No epoch finished: neither checkpoint exists, so no other is offered (none would load).
    for checkpoint in ("best", "last"):
        with pytest.raises(RunError) as err:
            run.existing_checkpoint(checkpoint)
        assert str(err.value) == (
            f"{tmp_path / (checkpoint + '.pt')} does not exist: the run has not finished an epoch, "
            "or ran with train.checkpoint: false"
        )
    (tmp_path / "last.pt").write_bytes(b"")
    assert run.existing_checkpoint("last") == tmp_path / "last.pt"
    with pytest.raises(RunError, match=r"train\.checkpoint: false; try --checkpoint last$"):
        run.existing_checkpoint("best")


# ----------------------------------------------------------------------- runs: which metric is best
@pytest.mark.parametrize(
    ("recipe", "status", "expected"),
    [
        ({"train": {"best_metric": "test_loss"}}, {"best_metric": "val_loss"}, "val_loss"),  # recorded wins
        ({"data": {"val_split": 0.1}}, {}, "val_acc"),  # killed before status.json: from recipe.yaml
        ({"data": {"val_split": 0}}, {}, "test_acc"),
        ({"data": {"val_split": 0.2}, "train": {"best_metric": "test_loss"}}, {}, "test_loss"),
    ],
)
def test_runs_reads_the_best_metric_from_status_else_from_the_recipe(
    recipe: dict[str, Any], status: dict[str, Any], expected: str
) -> None:
    assert best_metric_of(recipe, status) == expected
