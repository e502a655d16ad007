"""``--set KEY=VALUE``: applied left to right, a subtree replaced whole, and errors blamed on the
argument that wrote the value, not on the file position it replaced (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistkit.recipe.schema import load_recipe, resolved_dict

REPO = Path(__file__).resolve().parents[1]
MLP5 = REPO / "recipes" / "mlp5.yaml"  # optimizer: {name: sgd, lr: 0.01, momentum: 0.5} at lines 13-16


def optimizer_after(*sets: str) -> dict:
    return resolved_dict(load_recipe(MLP5, list(sets)))["optimizer"]


def test_the_same_key_twice_keeps_the_last() -> None:
    assert load_recipe(MLP5, ["epochs=3", "epochs=5"]).epochs == 5
    assert load_recipe(MLP5, ["epochs=5", "epochs=3"]).epochs == 3


def test_a_parent_then_a_child_sets_the_child_in_the_new_subtree() -> None:
    opt = optimizer_after("optimizer={name: adam}", "optimizer.lr=0.01")
    assert (opt["name"], opt["lr"]) == ("adam", 0.01)


def test_a_child_then_a_parent_replaces_the_child_with_the_whole_subtree() -> None:
    opt = optimizer_after("optimizer.lr=0.5", "optimizer={name: adam}")
    assert (opt["name"], opt["lr"]) == ("adam", 0.001)  # adam's own default, not 0.5


def test_cli_applies_sets_left_to_right(cli) -> None:
    ok = cli("validate", MLP5, "--set", "optimizer.lr=-1", "--set", "optimizer.lr=0.1")
    assert ok.returncode == 0, ok.stderr
    bad = cli("validate", MLP5, "--set", "optimizer.lr=0.1", "--set", "optimizer.lr=-1")
    assert bad.returncode == 2
    assert "--set optimizer.lr=-1: optimizer.lr: Input should be greater than 0" in bad.stderr


@pytest.mark.parametrize(
    ("sets", "blamed", "problem"),
    [
        (
            ["optimizer={name: adam, lr: -1}"],
            "--set optimizer={name: adam, lr: -1}",
            "optimizer.lr: Input should be greater than 0",
        ),
        (  # the file's momentum (line 16) went with the replaced subtree: no complaint about it
            ["optimizer={name: adam, momentum: 0.5}"],
            "--set optimizer={name: adam, momentum: 0.5}",
            "optimizer.momentum: unknown key 'momentum'",
        ),
        (
            ["optimizer={name: adam}", "optimizer.lr=-1"],
            "--set optimizer.lr=-1",
            "optimizer.lr: Input should be greater than 0",
        ),
    ],
    ids=["subtree", "subtree-unknown-key", "parent-then-child"],
)
def test_errors_in_an_overridden_subtree_name_the_set_argument(
    cli, sets: list[str], blamed: str, problem: str
) -> None:
    args = [a for s in sets for a in ("--set", s)]
    res = cli("validate", MLP5.relative_to(REPO), *args)
    assert res.returncode == 2
    assert f"{blamed}: {problem}" in res.stderr, res.stderr
    assert "mlp5.yaml:1" not in res.stderr, res.stderr  # no position of the replaced lines 13-16
    assert "1 problem found" in res.stderr
