"""Every shipped recipe validates and builds; ``mlp5.yaml`` is exactly the tutorial's network.

Recipes are found by glob, so a new file in ``recipes/`` is covered without touching this test.
Building needs only the dataset's input shape and class count, which come from the dataset
registry (for audio datasets, from the recipe's ``data.features``; for image folders from
``data.image``): no data files are read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mnistkit.build.components import build_loss, build_model, build_optimizer, build_schedule
from mnistkit.recipe.schema import Recipe, load_recipe
from mnistkit.registry import registries
from mnistkit.registry.core import Registries

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def input_shape(recipe: Recipe, reg: Registries) -> tuple[tuple[int, ...], int]:
    """(per-sample input shape, class count) the recipe's dataset will produce."""
    from mnistkit.recipe.model_check import input_shape as declared_shape

    # From the registry, data.features (audio) or data.image (image folders): what validate uses.
    shape = declared_shape(recipe, reg)
    assert shape is not None
    # Folder datasets learn their classes from the folder; any count will do to build the model.
    return tuple(shape), reg.datasets.get(recipe.data.dataset).meta.get("num_classes") or 10


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"mlp5.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_and_builds(path: Path) -> None:
    recipe = load_recipe(path)
    reg = registries()
    shape, num_classes = input_shape(recipe, reg)

    torch.manual_seed(0)
    model, infos = build_model(recipe, shape, num_classes, reg)
    assert infos[-1].out_shape == (num_classes,)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *shape))
    assert out.shape == (2, num_classes)

    loss_fn = build_loss(recipe, reg)
    assert torch.isfinite(loss_fn(out, torch.zeros(2, dtype=torch.long)))
    optimizer = build_optimizer(recipe, model, reg)
    assert optimizer.param_groups[0]["lr"] > 0
    build_schedule(recipe, optimizer, steps_per_epoch=10, reg=reg)


def test_shipped_recipes_validate_through_the_cli(cli) -> None:
    res = cli("validate", *(p.relative_to(REPO) for p in RECIPES))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"ok {p.relative_to(REPO)}" for p in RECIPES]
    assert all(" of float32 weights" in line for line in lines)  # every size is known statically


def test_mlp5_is_the_tutorial_network() -> None:
    recipe = load_recipe(REPO / "recipes" / "mlp5.yaml")
    reg = registries()
    assert recipe.data.dataset == "mnist"
    shape, num_classes = input_shape(recipe, reg)
    assert (shape, num_classes) == ((1, 28, 28), 10)
    model, _ = build_model(recipe, shape, num_classes, reg)

    # 784-512-256-128-64-10: ReLU after every hidden layer, nothing after the last one.
    widths = [784, 512, 256, 128, 64, 10]
    expected: list[tuple[type[nn.Module], tuple[int, int] | None]] = [(nn.Flatten, None)]
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        expected.append((nn.Linear, (fan_in, fan_out)))
        if i < len(widths) - 2:
            expected.append((nn.ReLU, None))
    got = [(type(m), (m.in_features, m.out_features) if isinstance(m, nn.Linear) else None) for m in model]
    assert got == expected
    assert all(m.bias is not None for m in model if isinstance(m, nn.Linear))

    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    assert n_params == 575_050

    assert isinstance(build_loss(recipe, reg), nn.CrossEntropyLoss)
    optimizer = build_optimizer(recipe, model, reg)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.5, False)
    assert recipe.data.batch_size == 64 and recipe.data.shuffle is True
    assert recipe.epochs == 10
    assert recipe.scheduler is None  # constant learning rate, as in the tutorial


@pytest.mark.parametrize(
    ("stem", "name"),
    [("_draft", "draft"), ("my draft (2)", "my-draft-2"), ("...", "run"), ("-x-", "x"), ("mlp5", "mlp5")],
)
def test_run_name_from_any_file_name_is_valid(tmp_path: Path, stem: str, name: str) -> None:
    """A recipe file called `_draft.yaml` validates (it failed on `name` at 1:1, a key never written)."""
    path = tmp_path / f"{stem}.yaml"
    path.write_text("data: {dataset: digits}\nmodel: {hidden: [8]}\n")
    assert load_recipe(path).name == name
