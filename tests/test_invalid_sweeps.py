"""Invalid sweep files are refused like invalid recipes: exit 2, file:line:col, no trial created.

Every ``tests/invalid_sweeps/*.yaml`` states in its header what ``mnistkit validate`` must print,
in the format of ``tests/invalid/`` (see tests/test_invalid_recipes.py). They search over
``tests/invalid_sweeps/base/recipe.yaml``, a valid recipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_invalid_recipes import parse_header, printed_problems

from mnistkit.errors import RecipeError
from mnistkit.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
INVALID = Path(__file__).resolve().parent / "invalid_sweeps"
FILES = sorted(INVALID.glob("*.yaml"))


def test_every_rule_has_a_file() -> None:
    names = {p.stem for p in FILES}
    for required in (
        "unknown_key",
        "unknown_param_option",
        "param_not_a_recipe_key",
        "choice_not_allowed_by_recipe",
        "bound_not_allowed_by_recipe",
        "log_with_zero_low",
        "low_not_below_high",
        "val_metric_without_split",
    ):
        assert required in names, f"tests/invalid_sweeps/{required}.yaml is missing"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_validate_reports_the_expected_problems(path: Path, cli) -> None:
    spec = parse_header(path)
    res = cli("validate", path.name, cwd=INVALID)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    printed = printed_problems(res.stderr)
    n = spec.problems if spec.problems is not None else len(spec.expects)
    assert len(printed) == n, f"expected {n} problem(s), got:\n{res.stderr}"
    for exp in spec.expects:
        prefix = f"{path.name}:{exp.loc}: {exp.message}"
        matches = [(head, hint) for head, hint in printed if head.startswith(prefix)]
        assert matches, f"no problem starting with {prefix!r} in:\n{res.stderr}"
        for want in exp.hints:
            assert any(want in hint for _, hint in matches), f"hint {want!r} missing:\n{res.stderr}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_load_sweep_raises_with_positions(path: Path) -> None:
    spec = parse_header(path)
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    wheres = [p.where for p in info.value.problems]
    for exp in spec.expects:
        assert f"{path}:{exp.loc}" in wheres, (exp, wheres)


def test_sweep_refuses_an_invalid_file_before_creating_anything(cli, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = cli("sweep", INVALID / "bound_not_allowed_by_recipe.yaml", "--out", out)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "params.optimizer.lr: lower bound: Input should be greater than 0" in res.stderr
    assert not out.exists()


def test_a_test_metric_is_allowed_with_a_warning(cli, tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"recipe: {INVALID / 'base' / 'recipe.yaml'}\nmetric: test_acc\ntrials: 2\n"
        "params:\n  optimizer.lr: {float: [1.0e-3, 1.0e-1], log: true}\n"
    )
    res = cli("validate", sweep)
    assert res.returncode == 0, res.stderr
    assert f"warning {sweep}:2:9: metric: tuning on test_acc tunes on the test set" in res.stderr
    assert res.stdout.startswith(f"ok {sweep}")


def test_a_value_valid_only_with_another_choice_is_accepted_with_a_note(tmp_path: Path) -> None:
    # momentum exists for sgd, not for adam: the space is valid, combining them is noted.
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"recipe: {INVALID / 'base' / 'recipe.yaml'}\nset: {{optimizer: {{name: adam}}}}\ntrials: 2\n"
        "params:\n  optimizer.name: {choice: [adam, sgd]}\n  optimizer.momentum: {float: [0.5, 0.9]}\n"
    )
    s = load_sweep(sweep)
    [note] = [w for w in s.warnings if w.field == "params.optimizer.momentum"]
    assert "valid only with some choices of the other parameters" in note.message


@pytest.mark.parametrize(
    ("set_", "param", "overrides", "params"),
    [
        ("{loss.label_smoothing: 0.1}", "optimizer.lr", [], {"optimizer.lr": 0.01}),  # the sweep's set
        ("{}", "loss.label_smoothing", [], {"loss.label_smoothing": 0.1}),  # a searched parameter
        ("{}", "optimizer.lr", ["loss.label_smoothing=0.1"], {"optimizer.lr": 0.01}),  # --set
    ],
    ids=["set", "params", "--set"],
)
def test_a_key_inside_a_bare_name_expands_it_as_set_does(
    tmp_path: Path, set_: str, param: str, overrides: list[str], params: dict[str, float]
) -> None:
    # mlp5.yaml writes `loss: cross_entropy`; `mnistkit run --set loss.label_smoothing=0.1`
    # expands it to a mapping, and every way a sweep changes the recipe must do the same.
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"recipe: {REPO / 'recipes' / 'mlp5.yaml'}\nset: {set_}\nmetric: test_acc\ntrials: 2\n"
        f"params:\n  {param}: {{float: [0.01, 0.2]}}\n"
    )
    s = load_sweep(sweep, overrides)
    recipe = s.trial_recipe(params, 3)
    assert (recipe.loss.name, recipe.loss.label_smoothing) == ("cross_entropy", 0.1)
    assert recipe.seed == s.base.seed + 3


def test_validate_recognizes_the_shipped_sweeps(cli) -> None:
    res = cli("validate", "recipes/sweeps/quickstart.yaml", "recipes/sweeps/fashion-mlp.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("ok recipes/sweeps/") == 2
