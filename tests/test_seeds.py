"""Several seeds of one recipe (issue 22): ``mnistkit run --seeds N``, ``seeds: [...]``.

The promise: a group is N ordinary runs, each exactly the run ``mnistkit run --set seed=K`` gives
(the plain runs here are the reference), and summary.json holds the mean, the sample standard
deviation, min and max of their metrics, recomputed here with the ``statistics`` module straight
from each run's metrics.csv. Ctrl-C stops the group; ``--resume GROUP`` finishes it, with the
same runs. Digits (8x8), 2 epochs, one thread: about a second a run.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.data.loading import SharedData, load_dataset
from mnistkit.data.types import LoadedData, Split
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.registry import registries

RECIPE = """\
name: seedy
seed: 4
data: {dataset: digits, batch_size: 64}
model: {hidden: [32], dropout: 0.1}
optimizer: {name: adam, lr: 0.003}
epochs: 2
train: {plots: false, progress: none, threads: 1}
"""
SEEDS = (4, 5, 6)  # --seeds 3 counts from the recipe's seed: 4
# Everything in metrics.csv but the timings.
COMPARED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def invoke(*args: Any, columns: int = 200) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def read_csv(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def results(run: Path) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in read_csv(run)[1]]


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNISTKIT_KILL_AT", raising=False)
    monkeypatch.delenv("MNISTKIT_NAN_AT", raising=False)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "seedy.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def plain(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The reference: one ordinary `mnistkit run --set seed=K` per seed."""
    root = tmp_path_factory.mktemp("plain")
    runs = {}
    for seed in SEEDS:
        res = invoke("run", recipe_file, "--set", f"seed={seed}", "--out", root / str(seed))
        assert res.exit_code == 0, res.output
        runs[seed] = root / str(seed)
    return runs


@pytest.fixture(scope="module")
def group(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("groups") / "g"
    res = invoke("run", recipe_file, "--seeds", "3", "--out", path, columns=80)
    assert res.exit_code == 0, res.output
    return path, res


def test_group_json_and_every_seed_is_the_plain_run_of_that_seed(
    group: tuple[Path, Any], plain: dict[int, Path], recipe_file: Path
) -> None:
    path, _ = group
    g = json.loads((path / "group.json").read_text())
    assert g["kind"] == "seeds" and g["name"] == "seedy" and g["recipe"] == str(recipe_file)
    assert g["members"] == [f"seed-{s}" for s in SEEDS]
    for seed in SEEDS:
        member = path / f"seed-{seed}"
        columns, _ = read_csv(member)
        assert columns == read_csv(plain[seed])[0]
        assert results(member) == results(plain[seed]), seed  # exact, as written (full precision)
        recipe = yaml.safe_load((member / "recipe.yaml").read_text())
        assert recipe == yaml.safe_load((plain[seed] / "recipe.yaml").read_text())
        assert recipe["seed"] == seed and "seeds" not in recipe  # re-running it runs that seed alone
        # Where each value was written (the report's Recipe section): the plain run's record,
        # but the seed came from the group, not from a --set.
        origins = json.loads((member / "origins.json").read_text())
        expected = json.loads((plain[seed] / "origins.json").read_text())
        assert expected.pop("seed") == f"--set seed={seed}"
        assert origins.pop("seed") == "one of the group's seeds (4, 5, 6)"
        assert origins == expected and origins["optimizer.lr"] == f"{recipe_file}:5:29"
    # The seeds differ: a group of copies of one run would pass everything above.
    assert len({tuple(results(path / f"seed-{s}")) for s in SEEDS}) == 3


def test_summary_is_mean_sample_std_min_max_of_the_runs_metrics(group: tuple[Path, Any]) -> None:
    path, res = group
    summary = json.loads((path / "summary.json").read_text())
    assert summary["finished"] == [f"seed-{s}" for s in SEEDS] and summary["not_finished"] == {}
    assert "sample standard deviation" in summary["std"]
    rows = {s: read_csv(path / f"seed-{s}")[1] for s in SEEDS}
    want: dict[str, list[float]] = {
        "final_test_acc": [float(rows[s][-1]["test_acc"]) for s in SEEDS],
        "best_test_acc": [max(float(r["test_acc"]) for r in rows[s]) for s in SEEDS],
        "final_train_loss": [float(rows[s][-1]["train_loss"]) for s in SEEDS],
        "best_test_loss": [min(float(r["test_loss"]) for r in rows[s]) for s in SEEDS],
        "epoch_seconds": [statistics.mean(float(r["seconds"]) for r in rows[s]) for s in SEEDS],
    }
    # The best test_acc is what each run's status.json calls its best (best.pt).
    for s, best in zip(SEEDS, want["best_test_acc"], strict=True):
        assert json.loads((path / f"seed-{s}" / "status.json").read_text())["best"] == best
    for key, values in want.items():
        got = summary["metrics"][key]
        assert got["n"] == 3
        assert got["mean"] == pytest.approx(statistics.mean(values), rel=1e-12), key
        assert got["std"] == pytest.approx(statistics.stdev(values), rel=1e-12), key
        assert (got["min"], got["max"]) == (min(values), max(values)), key
    # The table at the end shows the same figures, and fits 80 columns.
    acc = summary["metrics"]["final_test_acc"]
    assert re.search(rf"final test_acc\W+{acc['mean']:.2%} ± {acc['std']:.2%}\W+{acc['min']:.2%}", res.output)
    table = res.output[res.output.index("3 of 3 seeds finished") :].splitlines()[1:]
    table = [line for line in table if not line.startswith("saved: ")]  # a tmp path: long
    assert len(table) > 10 and max(len(line) for line in table) <= 80, res.output


def test_runs_shows_a_group_as_one_line_and_its_members_on_request(group: tuple[Path, Any]) -> None:
    path, _ = group
    bests = [json.loads((path / f"seed-{s}" / "status.json").read_text())["best"] for s in SEEDS]
    mean, std = statistics.mean(bests), statistics.stdev(bests)
    for columns in (80, 120):
        res = invoke("runs", path.parent, columns=columns)
        assert res.exit_code == 0, res.output
        lines = [line for line in res.output.splitlines() if re.search(r"\bg\b", line)]
        assert len(lines) == 1, res.output  # one line for the group, no line per seed
        assert re.search(rf"\bg\W+3/3\W.*{mean:.2%} ± {std:.2%}\W.*finished", lines[0]), res.output
        assert "seed-" not in res.output
        assert max(len(line) for line in res.output.splitlines()) <= columns, res.output
    res = invoke("runs", path.parent, "--members", columns=80)
    for seed, best in zip(SEEDS, bests, strict=True):
        assert re.search(rf"g/seed-{seed}\W.*2/2\W.*{best:.2%}", res.output), res.output


def test_ctrl_c_stops_the_group_and_resume_finishes_it_with_the_same_runs(
    recipe_file: Path, plain: dict[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g"
    # Ctrl-C in step 3 of epoch 2 of the first seed (23 steps an epoch).
    monkeypatch.setenv("MNISTKIT_KILL_AT", "2:3:INT")
    res = invoke("run", recipe_file, "--seeds", "3", "--out", path)
    assert res.exit_code == 130, res.output
    assert f"run --resume {path}" in res.output
    assert not (path / "seed-5").exists()  # the group stopped with the seed it was running
    summary = json.loads((path / "summary.json").read_text())
    assert summary["not_finished"] == {
        "seed-4": "interrupted",
        "seed-5": "not started",
        "seed-6": "not started",
    }
    listed = invoke("runs", path.parent)
    assert re.search(r"\bg\W+0/3\W.*interrupted", listed.output), listed.output
    assert f"run --resume {path}" in " ".join(listed.output.split())

    monkeypatch.delenv("MNISTKIT_KILL_AT")
    res = invoke("run", "--resume", path)
    assert res.exit_code == 0, res.output
    for seed in SEEDS:
        assert results(path / f"seed-{seed}") == results(plain[seed]), seed
    assert json.loads((path / "summary.json").read_text())["not_finished"] == {}
    assert len(json.loads((path / "seed-4" / "status.json").read_text())["resumed"]) == 1


def test_recipe_seeds_list_runs_those_seeds(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("epochs: 2", "epochs: 1") + "seeds: [9, 2]\n")
    res = invoke("run", recipe, "--out", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g" / "group.json").read_text())["members"] == ["seed-9", "seed-2"]
    assert yaml.safe_load((tmp_path / "g" / "seed-2" / "recipe.yaml").read_text())["seed"] == 2


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ("seeds: [1, 2]\n", ["--seeds", "2"], r"r\.yaml:8:\d+: seeds: --seeds 2 and the recipe's seeds"),
        ("seeds: [1, 2, 1]\n", [], r"r\.yaml:8:\d+: seeds: .*each seed once: 1 repeated"),
        ("seeds: []\n", [], r"r\.yaml:8:\d+: seeds: "),
        ("seeds: [0, x]\n", [], r"r\.yaml:8:\d+: seeds\[1\]: "),
        ("", ["--seeds", "2", "--nproc", "2"], r"--nproc cannot be combined with several seeds"),
    ],
    ids=["both", "repeated", "empty", "not-int", "nproc"],
)
def test_bad_seeds_are_clear_errors(tmp_path: Path, extra: str, args: list[str], message: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + extra)
    res = invoke("run", recipe, *args, "--out", tmp_path / "g")
    assert res.exit_code == 2, res.output
    assert re.search(message, " ".join(res.output.split())), res.output
    assert "Traceback" not in res.output and not (tmp_path / "g").exists()


def _loaded(seed: int) -> LoadedData:
    x = torch.full((4, 1, 2, 2), seed, dtype=torch.uint8)
    y = torch.arange(4) % 2
    return LoadedData(Split(x, y), Split(x, y), ["a", "b"], (0.5,), (0.5,), [], "test")


def test_shared_data_is_loaded_once_unless_the_loader_reads_the_seed() -> None:
    calls: list[str] = []
    reg = registries()

    def fixed(ctx: Any) -> LoadedData:
        calls.append("fixed")
        return _loaded(0)

    def seeded(ctx: Any) -> LoadedData:
        calls.append("seeded")
        return _loaded(ctx.seed)

    for name, fn in (("fixed_data", fixed), ("seeded_data", seeded)):
        reg.datasets.register(name, fn, "test data", shape=(1, 2, 2), num_classes=2, kind="image")
    shared = SharedData()
    for dataset in ("fixed_data", "seeded_data"):
        got = []
        for seed in (0, 1, 1, 0):
            text = f"seed: {seed}\ndata: {{dataset: {dataset}}}\nmodel: {{hidden: [4]}}\n"
            got.append(load_dataset(load_recipe_text(text, reg=reg), reg, None, shared=shared))
        if dataset == "fixed_data":
            assert all(d is got[0] for d in got)
        else:  # each seed its own data, and that data again for the same seed
            assert [int(d.train.x[0, 0, 0, 0]) for d in got] == [0, 1, 1, 0]
            assert got[1] is got[2] and got[0] is got[3]
    assert calls == ["fixed", "seeded", "seeded"] and shared.loads == 3


def test_a_seed_that_misses_an_expectation_makes_the_group_exit_4(
    recipe_file: Path, plain: dict[int, Path], tmp_path: Path
) -> None:
    """Each seed's run is judged on the recipe's expect: block, and the group exits as a run
    that missed would (4), naming the seeds that missed: the bound sits above the worst seed."""
    final = {s: float(read_csv(plain[s])[1][-1]["test_acc"]) for s in SEEDS}
    worst = min(final, key=lambda s: final[s])
    assert sorted(final.values())[1] > final[worst]  # only the worst seed misses
    path = tmp_path / "g"
    res = invoke(
        "run", recipe_file, "--seeds", "3", "--out", path, "--set", f"expect.test_acc=> {final[worst]!r}"
    )
    assert res.exit_code == 4, res.output
    missed = [line for line in res.output.splitlines() if line.startswith("missed:")]
    assert missed == [f"missed: seed-{worst}: test_acc > {final[worst]!r}: {final[worst]:.2%}"]
    for s in SEEDS:
        status = json.loads((path / f"seed-{s}" / "status.json").read_text())
        assert [o["met"] for o in status["expect"]] == [s != worst]
