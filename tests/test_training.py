"""Training end to end: what a run computes, what it leaves behind, and how it stops.

Small and fast: scikit-learn's bundled 8x8 digits with ``data.limit``, a couple of epochs. One
test trains on the real Fashion-MNIST files (``shared_data`` fixture; skipped without them).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import real_dataset

import mnistkit.session as runner
from mnistkit.build.components import model_layer_specs
from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, load_recipe_text
from mnistkit.registry import registries
from mnistkit.session import RunOptions, RunResult

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
seed: 3
data: {dataset: digits, limit: 400, test_limit: 200, batch_size: 32}
model: {hidden: [32]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.5}
epochs: 2
train: {device: cpu, threads: 1, plots: false, checkpoint: false}
"""

RESULT_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]


def train(tmp_path: Path, *overrides: str, text: str = TINY, out: str = "run") -> RunResult:
    recipe = load_recipe_text(text, "tiny.yaml", list(overrides))
    return runner.run(recipe, RunOptions(out=tmp_path / out, progress="none"))


def metric_columns(run_dir: Path, columns: list[str] = RESULT_COLUMNS) -> dict[str, list[str]]:
    """The metrics.csv columns as written (strings: compared exactly, not approximately)."""
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {c: [r[c] for r in rows] for c in columns}


def header(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()[0].split(",")


# ------------------------------------------------------------------------ what is computed
def test_cross_entropy_equals_log_softmax_plus_nll(tmp_path: Path) -> None:
    # CrossEntropyLoss(logits) = NLLLoss(log_softmax(logits)): with `loss: nll` mnistkit appends
    # log_softmax to the model, so both recipes train the same function from the same weights.
    nll_recipe = load_recipe_text(TINY, overrides=["loss=nll"])
    assert model_layer_specs(nll_recipe, 10, registries())[-1] == {"type": "log_softmax"}

    ce = train(tmp_path, "loss=cross_entropy", out="ce").rows
    nll = train(tmp_path, "loss=nll", out="nll").rows
    assert len(ce) == len(nll) == 2
    for a, b in zip(ce, nll, strict=True):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)
        assert a["test_acc"] == b["test_acc"]
    assert ce[1]["train_loss"] < ce[0]["train_loss"]  # and it does learn


def test_same_recipe_same_seed_same_numbers(tmp_path: Path) -> None:
    a = train(tmp_path, out="a").run_dir
    b = train(tmp_path, out="b").run_dir
    assert metric_columns(a) == metric_columns(b)


def test_seed_changes_the_run(tmp_path: Path) -> None:
    # The comparison above is meaningful only if the numbers depend on the seed at all.
    a = train(tmp_path, "seed=3", out="a").run_dir
    b = train(tmp_path, "seed=4", out="b").run_dir
    assert metric_columns(a)["train_loss"] != metric_columns(b)["train_loss"]


# ----------------------------------------------------------------------------- stopping
def test_target_accuracy_stops_at_the_first_epoch_reaching_it(tmp_path: Path) -> None:
    target = 0.6
    result = train(tmp_path, f"train.target_accuracy={target}", "epochs=30", "optimizer.lr=0.1")
    accs = [r["test_acc"] for r in result.rows]
    assert len(accs) < 30
    assert accs[-1] >= target and all(a < target for a in accs[:-1]), accs
    assert result.stop_reason.startswith("target reached: test_acc")
    assert json.loads((result.run_dir / "status.json").read_text())["epochs_done"] == len(accs)


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    # min_delta larger than any possible change: no epoch after the first counts as better.
    result = train(
        tmp_path,
        "epochs=20",
        "train.early_stopping={patience: 2, metric: train_loss, min_delta: 100}",
    )
    assert len(result.rows) == 3
    assert result.stop_reason == "early stopping: train_loss has not improved for 2 epoch(s)"


def test_val_split_adds_validation_columns(tmp_path: Path) -> None:
    result = train(tmp_path, "data.val_split=0.25", "train.best_metric=val_acc")
    cols = header(result.run_dir)
    assert cols.index("train_acc") < cols.index("val_loss") < cols.index("val_acc") < cols.index("test_loss")
    for row in result.rows:
        assert 0 < row["val_loss"] and 0 <= row["val_acc"] <= 1
    assert result.best == max(r["val_acc"] for r in result.rows)
    # 400 examples, a quarter held out: 300 trained on per epoch.
    assert result.rows[0]["samples_per_s"] * result.rows[0]["seconds"] == pytest.approx(300)
    without = header(train(tmp_path, out="plain").run_dir)
    assert "val_loss" not in without and "val_acc" not in without


# --------------------------------------------------------------------- the run directory
def _tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("checkpoint: false", "checkpoint: true"), encoding="utf-8")
    return path


def test_run_directory_naming_contents_and_rerun(cli, tmp_path: Path) -> None:
    recipe = _tiny_file(tmp_path)
    runs = tmp_path / "runs"
    res = cli("run", recipe, "--runs", runs, "--progress", "plain")
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = list(runs.iterdir())
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", run_dir.name), run_dir.name
    assert {"recipe.yaml", "metrics.csv", "status.json", "env.json", "last.pt", "best.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert f"saved:     {run_dir}" in res.stdout
    cols = header(run_dir)
    wanted = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    assert [c for c in cols if c in wanted] == wanted
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert len(metric_columns(run_dir)["epoch"]) == 2

    # The saved recipe is complete and valid on its own, and re-running it (here in this
    # process, so also across processes) reproduces the run exactly.
    saved = run_dir / "recipe.yaml"
    assert cli("validate", saved).returncode == 0
    assert load_recipe(saved).model_dump() == load_recipe(recipe).model_dump()
    again = runner.run(load_recipe(saved), RunOptions(out=tmp_path / "again", progress="none"))
    assert metric_columns(again.run_dir) == metric_columns(run_dir)


def test_existing_run_directory_is_never_overwritten(cli, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.csv").write_text("precious\n")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    res = cli("run", _tiny_file(tmp_path), "--out", out, "--progress", "plain")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"--out {out}: already exists and is not empty; mnistkit never overwrites a run" in res.stderr
    assert "Traceback" not in res.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_empty_out_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert train(tmp_path, "epochs=1").run_dir == tmp_path / "run"
    assert (tmp_path / "run" / "metrics.csv").is_file()


# ------------------------------------------------------------------------------ real data
def test_fashion_mnist_end_to_end(cli, shared_data: Path, tmp_path: Path) -> None:
    fashion = real_dataset(shared_data, "fashion-mnist")
    out = tmp_path / "fashion"
    res = cli(
        "run",
        "recipes/mlp5.yaml",
        "--set",
        "data.dataset=fashion_mnist",
        "--set",
        "data.limit=3000",
        "--set",
        "epochs=2",
        "--set",
        "train.plots=false",
        "--set",
        "train.threads=1",
        # The tutorial's lr 0.01 needs more than these 2 x 47 steps (it reaches ~30 % here).
        "--set",
        "optimizer.lr=0.1",
        "--data-dir",
        fashion,
        "--out",
        out,
        "--progress",
        "plain",
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    said = " ".join(res.stdout.split())  # the header wraps at 80 columns, between words
    assert "fashion_mnist: 3,000 train / 10,000 test, 10 classes, input 1x28x28" in said
    assert {"recipe.yaml", "metrics.csv", "status.json", "env.json", "last.pt", "best.pt"} <= {
        p.name for p in out.iterdir()
    }
    test_acc = [float(v) for v in metric_columns(out)["test_acc"]]
    assert len(test_acc) == 2 and test_acc[-1] > 0.6, test_acc
    env = json.loads((out / "env.json").read_text())
    assert any("train-images-idx3-ubyte" in f for f in env["data_files"]), env["data_files"]


NO_DEBIAN = "import pathlib, mnistkit.data.vision as v; v.DEBIAN_FASHION_DIR = pathlib.Path('/nonexistent')"


def test_missing_data_explains_where_it_looked_and_how_to_fix(cli, tmp_path: Path) -> None:
    empty, env_dir = tmp_path / "empty", tmp_path / "env-data"
    empty.mkdir()
    env_dir.mkdir()
    res = cli(
        "run",
        "recipes/mlp5.yaml",
        "--set",
        "data.dataset=fashion_mnist",
        "--set",
        "data.download=false",
        "--data-dir",
        empty,
        "--out",
        tmp_path / "run",
        "--progress",
        "plain",
        env={"MNISTKIT_DATA": str(env_dir)},
        prelude=NO_DEBIAN,  # Debian's copy of Fashion-MNIST, if installed, must not be found
    )
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr
    assert "Traceback" not in err and "internal error" not in err
    assert "Could not find the Fashion-MNIST data files." in err
    assert "train-images-idx3-ubyte" in err  # what it looked for
    assert f"{empty}  (" in err and f"{env_dir}  (" in err  # where: --data-dir and $MNISTKIT_DATA
    assert "--data-dir DIR" in err and "MNISTKIT_DATA" in err  # how to fix it
    assert "data.download: true" in err


def test_invalid_override_is_a_recipe_error_in_process() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["epochs=0"])
    assert info.value.problems[0].where == "--set epochs=0"
