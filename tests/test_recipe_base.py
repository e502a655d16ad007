"""Recipes that build on recipes: `base: FILE` merged deeply, positions in the right file, cycles refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, resolved_dict

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_child_merges_deeply_over_its_base(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        "name: base\ndata: {dataset: digits, batch_size: 32}\nmodel: {hidden: [64, 32], dropout: 0.1}\n"
        "optimizer: {name: sgd, lr: 0.01, momentum: 0.5}\nepochs: 10\n",
    )
    child = write(
        tmp_path / "sub" / "child.yaml",
        "base: ../base.yaml\ndata: {batch_size: 128}\nmodel: {hidden: [16]}\noptimizer: {lr: 0.1}\n",
    )
    r = resolved_dict(load_recipe(child))
    assert r["name"] == "child"  # the name belongs to the file, never inherited
    assert r["data"]["dataset"] == "digits" and r["data"]["batch_size"] == 128  # merged key by key
    assert r["model"]["hidden"] == [16] and r["model"]["dropout"] == 0.1  # a list replaces
    assert r["optimizer"] == {**r["optimizer"], "name": "sgd", "lr": 0.1, "momentum": 0.5}
    assert r["epochs"] == 10 and "base" not in r  # the resolved recipe is complete in itself
    other = write(tmp_path / "adam.yaml", "base: base.yaml\noptimizer: {name: adam, lr: 0.001}\n")
    assert load_recipe(other).optimizer.name == "adam"  # a new name replaces: no sgd momentum left


def test_problems_point_into_the_file_that_wrote_the_value(tmp_path: Path) -> None:
    base = "data: {dataset: digits}\nmodel: {hidden: [8]}\noptimizer:\n  name: sgd\n  momentm: 0.9\n"
    write(tmp_path / "base.yaml", base)
    child = write(tmp_path / "child.yaml", "base: base.yaml\nepochs: 0\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    where = {p.field: p.where for p in err.value.problems}
    assert where["optimizer.momentm"] == f"{tmp_path / 'base.yaml'}:5:3"
    assert where["epochs"] == f"{child}:2:9"


def test_a_cycle_of_bases_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match=r"cycle: a\.yaml -> b\.yaml -> a\.yaml"):
        load_recipe(tmp_path / "a.yaml")


def test_set_applies_over_the_merged_recipe(tmp_path: Path) -> None:
    child = write(tmp_path / "c.yaml", f"base: {REPO / 'recipes' / 'mlp5.yaml'}\nepochs: 2\n")
    r = load_recipe(child, ["optimizer.lr=0.2"])
    assert r.epochs == 2 and r.optimizer.lr == 0.2 and r.model.hidden == [512, 256, 128, 64]
