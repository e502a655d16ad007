"""Sweep parameter distributions (issue 17): what a trial gets is what the sweep file asked for.

A search space that is quietly sampled wrong (a log range sampled linearly, a step ignored) or a
trial that runs with other values than the ones Optuna recorded still gives a sweep that finishes
and reports a best trial; only these tests notice. The sampling is checked in-process on the
sweep's own sampler (``make_sampler``) and objective (``suggest``, ``Sweep.trial_recipe``), so
mutation testing traces them; a real sweep on ``digits`` checks that each trial's run directory
records exactly the values its trial has in the study's storage.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from sweep_helpers import REPO, read_trials

from mnistkit.recipe.schema import load_recipe
from mnistkit.sweeps.objective import suggest
from mnistkit.sweeps.spec import Sweep, load_sweep
from mnistkit.sweeps.worker import make_sampler, quiet_optuna

SPACE = (
    "params:\n"
    "  optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}\n"
    "  model.dropout: {float: [0.0, 0.4]}\n"
    "  loss.label_smoothing: {float: [0.0, 0.2], step: 0.05}\n"
    "  data.batch_size: {int: [16, 64], step: 16}\n"
    "  epochs: {int: [1, 1000], log: true}\n"
    "  model.hidden: {choice: [[32], [16, 8]]}\n"
    "  model.activation: {choice: [relu, tanh]}\n"
)


def sweep_file(folder: Path, sampler: str, space: str = SPACE, trials: int = 3, extra: str = "") -> Path:
    path = folder / "sweep.yaml"
    path.write_text(
        f"recipe: {REPO / 'recipes' / 'quickstart.yaml'}\n"
        "set:\n"
        "  data.val_split: 0.25\n"
        "  data.limit: 240\n"
        "  epochs: 1\n"
        "  train.plots: false\n"
        "  train.threads: 1\n"
        "metric: val_acc\n"
        f"trials: {trials}\n"
        "pruner: none\n"
        f"sampler: {sampler}\n"
        f"{extra}"
        f"{space}",
        encoding="utf-8",
    )
    return path


Draws = list[dict[str, Any]]


def sample(sweep: Sweep, n: int, worker: int = 0) -> tuple[Draws, optuna.Study]:
    """``n`` trials' parameters from the sweep's own sampler and ``suggest``, as a worker gets them."""
    quiet_optuna()
    study = optuna.create_study(direction=sweep.direction, sampler=make_sampler(sweep, worker))
    drawn: Draws = []

    def objective(trial: optuna.Trial) -> float:
        drawn.append(suggest(trial, sweep))
        return 0.5

    study.optimize(objective, n_trials=n)
    return drawn, study


@pytest.fixture(scope="module")
def random_draws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sweep, Draws, optuna.Study]:
    folder = tmp_path_factory.mktemp("space")
    sweep = load_sweep(sweep_file(folder, "{name: random, seed: 0}"))
    drawn, study = sample(sweep, 400)
    return sweep, drawn, study


def test_each_range_is_handed_to_optuna_as_the_distribution_the_file_declares(random_draws) -> None:
    _, _, study = random_draws
    for t in study.trials:
        assert t.distributions == {
            "optimizer.lr": FloatDistribution(1.0e-4, 1.0e-1, log=True),
            "model.dropout": FloatDistribution(0.0, 0.4),
            "loss.label_smoothing": FloatDistribution(0.0, 0.2, step=0.05),
            "data.batch_size": IntDistribution(16, 64, step=16),
            "epochs": IntDistribution(1, 1000, log=True),
            # a list is stored as its JSON text (Optuna's choices are scalars), a name as itself
            "model.hidden": CategoricalDistribution(["[32]", "[16, 8]"]),
            "model.activation": CategoricalDistribution(["relu", "tanh"]),
        }


def test_a_log_range_is_sampled_on_a_log_scale(random_draws) -> None:
    # Half of a log-uniform sample lies below the geometric mean of the bounds; of a uniform one,
    # (sqrt(lo*hi) - lo) / (hi - lo): 3 % for [1e-4, 0.1] and 3 % for [1, 1000]. With 400 draws
    # the two hypotheses are > 8 standard deviations from the 0.3 threshold (0.5 +- 0.025 and
    # 0.03 +- 0.009), and the seeded sampler makes the draw the same every time.
    _, drawn, _ = random_draws
    for name, (lo, hi) in {"optimizer.lr": (1.0e-4, 1.0e-1), "epochs": (1, 1000)}.items():
        values = [float(d[name]) for d in drawn]
        assert all(lo <= v <= hi for v in values), name
        below = sum(v < math.sqrt(lo * hi) for v in values) / len(values)
        assert 0.4 < below < 0.6, f"{name}: {below:.2f} of the draws below the geometric mean"
    # ...and a range without log: true is uniform: half of it below the midpoint, 3 % below the
    # point where a log scale would put half.
    dropout = [float(d["model.dropout"]) for d in drawn]
    assert 0.4 < sum(v < 0.2 for v in dropout) / len(dropout) < 0.6


def test_steps_give_only_values_on_the_grid_and_reach_both_bounds(random_draws) -> None:
    _, drawn, _ = random_draws
    sizes = [d["data.batch_size"] for d in drawn]
    assert all(type(v) is int for v in sizes)
    assert set(sizes) == {16, 32, 48, 64}  # lo + k*16, both bounds included
    # A float step: lo + k*step (Optuna computes 0.15 as 0.15000000000000002), k = 0..4.
    steps = [round(d["loss.label_smoothing"] / 0.05) for d in drawn]
    assert set(steps) == {0, 1, 2, 3, 4}
    assert all(math.isclose(d["loss.label_smoothing"], k * 0.05) for d, k in zip(drawn, steps, strict=True))
    epochs = [d["epochs"] for d in drawn]
    assert all(type(v) is int for v in epochs)
    assert {tuple(d["model.hidden"]) for d in drawn} == {(32,), (16, 8)}


def test_tpe_keeps_every_value_inside_its_range_and_on_its_step(tmp_path: Path) -> None:
    # After its 2 random start-up trials TPE samples from its own model of good regions: the
    # values must still respect the declared ranges and steps.
    sweep = load_sweep(sweep_file(tmp_path, "{name: tpe, seed: 3, startup_trials: 2}"))
    drawn, _ = sample(sweep, 30)
    for d in drawn:
        assert 1.0e-4 <= d["optimizer.lr"] <= 1.0e-1
        assert d["data.batch_size"] in (16, 32, 48, 64)
        k = round(d["loss.label_smoothing"] / 0.05)
        assert k in range(5) and math.isclose(d["loss.label_smoothing"], k * 0.05)
        assert d["model.hidden"] in ([32], [16, 8])


def test_a_trial_recipe_holds_exactly_the_trial_s_values(random_draws) -> None:
    sweep, drawn, _ = random_draws
    base_doc = copy.deepcopy(sweep.base_doc.data)
    for number, params in enumerate(drawn[:20]):
        recipe = sweep.trial_recipe(params, number)
        assert recipe.optimizer.lr == params["optimizer.lr"]
        assert recipe.model.dropout == params["model.dropout"]
        assert recipe.loss.name == "cross_entropy"  # the bare name expanded, not replaced
        assert recipe.loss.label_smoothing == params["loss.label_smoothing"]
        assert recipe.data.batch_size == params["data.batch_size"]
        assert recipe.epochs == params["epochs"]
        assert list(recipe.model.hidden) == params["model.hidden"]
        assert recipe.model.activation.name == params["model.activation"]
        assert recipe.seed == sweep.base.seed + number
        assert recipe.name == f"quickstart-t{number:04d}"
        # The rest of the base recipe (and the sweep's fixed `set:`) is kept.
        assert (recipe.data.limit, recipe.data.val_split, recipe.optimizer.name) == (240, 0.25, "adam")
    # No trial's values leak into the base recipe the next trials (and best.yaml) start from.
    assert sweep.base_doc.data == base_doc


SMALL = (
    "params:\n"
    "  optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}\n"
    "  data.batch_size: {int: [16, 64], step: 16}\n"
)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_sampler_repeats_its_values_and_each_worker_draws_its_own(
    sampler: str, tmp_path: Path
) -> None:
    def draws(seed: object, worker: int = 0) -> Draws:
        spec = f"{{name: {sampler}, seed: {seed}, startup_trials: 3}}"
        return sample(load_sweep(sweep_file(tmp_path, spec, SMALL)), 6, worker)[0]

    first = draws(5)
    assert draws(5) == first  # the same sweep again: the same values in the same order
    assert draws(5, worker=2) == draws(7)  # worker k of seed s draws as seed s + k...
    assert draws(5, worker=1) != first  # ...so extra workers do not repeat the first one
    assert draws("null") != draws("null")  # seed: null, different every time


def test_tpe_draws_its_first_startup_trials_at_random_then_from_its_model(tmp_path: Path) -> None:
    # startup_trials: 4 -> the first 4 trials are the seeded random sampler's, the 5th is TPE's own.
    tpe = sample(load_sweep(sweep_file(tmp_path, "{name: tpe, seed: 2, startup_trials: 4}", SMALL)), 5)[0]
    rnd = sample(load_sweep(sweep_file(tmp_path, "{name: random, seed: 2}", SMALL)), 5)[0]
    assert tpe[:4] == rnd[:4] and tpe[4] != rnd[4]


def test_the_grid_sampler_tries_every_combination_once_in_a_seeded_order(tmp_path: Path) -> None:
    space = (
        "params:\n  optimizer.lr: {choice: [0.1, 0.01, 0.001]}\n  model.hidden: {choice: [[32], [16, 8]]}\n"
    )

    def order(seed: int) -> list[tuple[float, tuple[int, ...]]]:
        sweep = load_sweep(sweep_file(tmp_path, f"{{name: grid, seed: {seed}}}", space, trials=6))
        drawn = sample(sweep, 6)[0]
        return [(d["optimizer.lr"], tuple(d["model.hidden"])) for d in drawn]

    first = order(0)
    assert sorted(first) == sorted((lr, h) for lr in (0.1, 0.01, 0.001) for h in ((32,), (16, 8)))
    assert order(0) == first
    assert order(1) != first


def test_a_real_sweep_s_run_directories_record_the_values_in_the_study(cli, tmp_path: Path) -> None:
    space = (
        "params:\n"
        "  optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}\n"
        "  data.batch_size: {int: [16, 64], step: 16}\n"
        "  loss.label_smoothing: {float: [0.0, 0.2]}\n"
    )
    sweep = sweep_file(tmp_path, "{name: random, seed: 5}", space, trials=3)
    out = tmp_path / "s"
    res = cli("sweep", sweep, "--out", out, "--progress", "none", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    quiet_optuna()
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    rows = {int(r["number"]): r for r in read_trials(out)}
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    values = set()
    for t in study.trials:
        recipe = load_recipe(out / t.user_attrs["run_dir"] / "recipe.yaml")
        # Exactly the stored values (floats compared exactly: recipe.yaml must not round them).
        assert recipe.optimizer.lr == t.params["optimizer.lr"]
        assert recipe.data.batch_size == t.params["data.batch_size"] and type(recipe.data.batch_size) is int
        assert recipe.loss.label_smoothing == t.params["loss.label_smoothing"]
        assert recipe.seed == t.number and recipe.epochs == 1
        assert float(rows[t.number]["optimizer.lr"]) == t.params["optimizer.lr"]
        values.add(tuple(t.params.values()))
    assert len(values) == 3  # three different trials, not one value repeated


def test_trials_are_not_judged_by_the_base_recipe_s_expectations(tmp_path: Path) -> None:
    """quickstart.yaml states what it reaches as written (expect:); a trial runs other values, so
    neither it nor best.yaml carries that block, unless the sweep's own set: gives one."""
    assert load_sweep(sweep_file(tmp_path, "{name: random, seed: 0}")).base.expect == {}
    recipe_expect = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())["expect"]
    assert recipe_expect  # the base recipe does have expectations
    path = tmp_path / "with.yaml"
    path.write_text(
        sweep_file(tmp_path, "{name: random, seed: 0}")
        .read_text()
        .replace("set:\n", "set:\n  expect.val_acc: '>= 0.5'\n"),
        encoding="utf-8",
    )
    sweep = load_sweep(path)
    trial = sweep.trial_recipe({"optimizer.lr": 0.01}, 0)
    assert trial.expect == {"val_acc": ">= 0.5"}
