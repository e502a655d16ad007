"""The recipe's ``expect:`` block and ``mnistkit check`` (issue 22: a recipe is a regression test).

What a run reports about its expectations (status.json, the summary, the exit code) is checked
against the metrics.csv the same run wrote, recomputed here; the messages for bad expectations
are in tests/invalid/expect_*.yaml.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, hermetic_env

from mnistkit.errors import RecipeError
from mnistkit.recipe.expect import EXIT_MISSED, ConditionError, parse_condition
from mnistkit.recipe.schema import load_recipe

QUICK = ["--set", "train.threads=1", "--set", "train.plots=false", "--set", "train.checkpoint=false"]


def mnistkit(*args: str | Path, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnistkit", *map(str, args)],
        cwd=cwd,
        env=hermetic_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def recipe_file(folder: Path, name: str, expect: str | None, epochs: int) -> Path:
    """quickstart.yaml's settings (the 8x8 digits: seconds), with ``expect`` on line 5."""
    text = (
        "data: {dataset: digits, batch_size: 32}\nmodel: {hidden: [128, 64]}\n"
        f"optimizer: {{name: adam, lr: 0.003}}\nepochs: {epochs}\n"
    )
    path = folder / f"{name}.yaml"
    path.write_text(text + (f"expect: {expect}\n" if expect else ""), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- after a run
#: Four that hold whatever the weights (3 epochs of quickstart reach ~94 %), one that cannot.
EXPECT = {
    "test_acc": ">= 50%",
    "best_test_loss": "< 10",
    "epochs_done": "== 3",
    "best_epoch": "between 1 and 3",
    "train_seconds": "< 0",
}


@pytest.fixture(scope="module")
def expect_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("expect_run")
    # Instead of the recipe's own expectations (expect=null first), these.
    sets = ["--set", "expect=null"] + [w for k, v in EXPECT.items() for w in ("--set", f"expect.{k}={v}")]
    res = mnistkit(
        "run", REPO / "recipes" / "quickstart.yaml", "--set", "epochs=3", *QUICK, *sets,
        "--out", tmp / "run", "--progress", "plain", cwd=tmp, cache=tmp / "cache",
    )  # fmt: skip
    status = json.loads((tmp / "run" / "status.json").read_text())
    return {"res": res, "status": status, "rows": read_csv(tmp / "run" / "metrics.csv")}


def test_a_missed_expectation_exits_with_its_own_code(expect_run: dict[str, Any]) -> None:
    res = expect_run["res"]
    assert res.returncode == EXIT_MISSED == 4, res.stdout + res.stderr
    assert expect_run["status"]["status"] == "finished"  # the run itself is fine
    assert "Traceback" not in res.stderr


def test_status_json_records_each_expectation_as_metrics_csv_says(expect_run: dict[str, Any]) -> None:
    rows = expect_run["rows"]
    # Recomputed from metrics.csv, independently of mnistkit/recipe/expect.py.
    best_acc = max(r["test_acc"] for r in rows)
    recorded = {
        "test_acc": rows[-1]["test_acc"],
        "best_test_loss": min(r["test_loss"] for r in rows),
        "epochs_done": len(rows),
        "best_epoch": next(r["epoch"] for r in rows if r["test_acc"] == best_acc),  # best_metric auto
        "train_seconds": sum(r["seconds"] for r in rows),
    }
    holds = {
        "test_acc": recorded["test_acc"] >= 0.5,
        "best_test_loss": recorded["best_test_loss"] < 10,
        "epochs_done": recorded["epochs_done"] == 3,
        "best_epoch": 1 <= recorded["best_epoch"] <= 3,
        "train_seconds": recorded["train_seconds"] < 0,
    }
    entries = expect_run["status"]["expect"]
    assert [e["name"] for e in entries] == list(EXPECT)
    for e in entries:
        assert e["condition"] == EXPECT[e["name"]]
        assert e["value"] == pytest.approx(recorded[e["name"]], rel=1e-9), e
        assert e["met"] is holds[e["name"]], e
    assert [e["met"] for e in entries] == [True, True, True, True, False]


def test_the_summary_shows_each_expectation_with_its_value(expect_run: dict[str, Any]) -> None:
    rows, out = expect_run["rows"], expect_run["res"].stdout
    lines = [line for line in out.splitlines() if line.startswith("expect:")]
    assert len(lines) == len(EXPECT), out
    assert f"test_acc >= 50%: met ({rows[-1]['test_acc']:.2%})" in lines[0]
    assert "epochs_done == 3: met (3)" in lines[2]
    assert f"train_seconds < 0 s: missed ({sum(r['seconds'] for r in rows):.1f} s)" in lines[4]
    assert max(len(line) for line in out.splitlines() if not line.startswith("epoch ")) <= 80


# ------------------------------------------------------------------------------ check
def test_check_runs_each_recipe_and_gates_on_its_expectations(tmp_path: Path) -> None:
    met = recipe_file(tmp_path, "met", '{test_acc: ">= 0.5", epochs_done: "== 1"}', epochs=1)
    plain = recipe_file(tmp_path, "plain", None, epochs=1)
    res = mnistkit("check", met.name, plain.name, *QUICK, "--runs", "out", cwd=tmp_path, cache=tmp_path / "c")
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = (tmp_path / "out").iterdir()  # plain.yaml has no expect: it is not run
    acc = read_csv(run_dir / "metrics.csv")[-1]["test_acc"]
    assert res.stdout.splitlines() == [
        "met.yaml: training 1 epoch, 2 expectations ...",
        f"  test_acc >= 50%: met ({acc:.2%})",
        "  epochs_done == 1: met (1)",
        f"  run: out/{run_dir.name}",
        "plain.yaml: no expect: block, not run",
        "2 of 2 expectations met (1 recipe run, 1 without expect:)",
    ]

    # The same recipe with an expectation it cannot meet: exit code 4, said per line and in sum.
    res = mnistkit(
        "check", met.name, *QUICK, "--set", "expect.epochs_done=> 1", "--runs", "out",
        cwd=tmp_path, cache=tmp_path / "c",
    )  # fmt: skip
    assert res.returncode == EXIT_MISSED, res.stdout + res.stderr
    assert "  epochs_done > 1: missed (1)" in res.stdout.splitlines()
    assert res.stdout.splitlines()[-1] == "1 of 2 expectations met, 1 missed (1 recipe run)"


def test_check_validates_every_recipe_before_training_any(tmp_path: Path) -> None:
    good = recipe_file(tmp_path, "good", '{test_acc: ">= 0.5"}', epochs=1)
    bad = recipe_file(tmp_path, "bad", '{test_accuracy: ">= 0.5"}', epochs=1)
    res = mnistkit("check", good.name, bad.name, "--runs", "out", cwd=tmp_path, cache=tmp_path / "c")
    assert res.returncode == 2, res.stdout + res.stderr
    assert (
        "bad.yaml:5:10: expect.test_accuracy: unknown metric" in res.stderr
        and "did you mean 'test_acc'?" in res.stderr
    )
    assert "nothing was run" in res.stderr
    assert not (tmp_path / "out").exists()

    res = mnistkit("check", recipe_file(tmp_path, "plain", None, 1).name, cwd=tmp_path, cache=tmp_path / "c")
    assert res.returncode == 2 and "none of the recipes has an expect: block" in res.stderr


# ---------------------------------------------------------------------- the conditions
@pytest.mark.parametrize(
    ("name", "text", "true_at", "false_at"),
    [
        ("test_acc", ">= 0.97", [0.97, 0.99], [0.9699]),
        ("test_acc", ">= 97%", [0.97, 1.0], [0.9699]),  # a percentage is the same bound
        ("test_acc", "> 97.5 %", [0.976], [0.975]),
        ("test_loss", "<= 0.2", [0.2, 0.1], [0.2001]),
        ("test_loss", "< 0.2", [0.1999], [0.2]),
        ("train_seconds", "<= 60 s", [60.0], [60.5]),
        ("best_epoch", "== 3", [3], [2, 4]),
        ("best_epoch", "between 2 and 4", [2, 3, 4], [1, 5]),
        ("test_acc", "between 90% and 0.95", [0.9, 0.95], [0.89, 0.951]),
    ],
)
def test_conditions_hold_exactly_where_they_say(
    name: str, text: str, true_at: list[float], false_at: list[float]
) -> None:
    cond = parse_condition(name, text)
    assert all(cond.holds(v) for v in true_at), (text, true_at)
    assert not any(cond.holds(v) for v in false_at), (text, false_at)


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("test_acc", ">= 97", "an accuracy is a fraction from 0 to 1"),
        ("test_loss", "<= 5%", "% applies to accuracies only"),
        ("best_epoch", "<= 8 s", "s applies to times only"),
        ("test_acc", "at least 0.9", "cannot read condition"),
        ("test_acc", 0.9, "has no comparison"),
    ],
)
def test_unreadable_conditions_are_refused(name: str, text: Any, said: str) -> None:
    with pytest.raises(ConditionError, match=said):
        parse_condition(name, text)


def test_set_takes_a_condition_that_starts_with_a_comparison() -> None:
    # A leading > starts a YAML block of text; on the command line it can only mean the text.
    sets = ["expect=null", "expect.test_acc=>= 0.9", "expect.best_epoch=< 9"]
    rec = load_recipe(REPO / "recipes" / "quickstart.yaml", sets)
    assert dict(rec.expect) == {"test_acc": ">= 0.9", "best_epoch": "< 9"}
    with pytest.raises(RecipeError, match="is not valid YAML"):  # elsewhere the YAML error stays
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["model.hidden=[1,"])
