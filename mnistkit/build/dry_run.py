"""``mnistkit validate --build``: build the real model and push a zero batch through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mnistkit.errors import Problem, RecipeError
from mnistkit.layers.shapes import LayerInfo, Shape, ShapeError, fmt
from mnistkit.recipe.model_check import (
    PLACEHOLDER_CLASSES,
    LayerSpec,
    _output_mismatch,
    input_shape,
    layer_specs,
)
from mnistkit.recipe.sections import RecipeBase
from mnistkit.recipe.yamlio import Located


def dry_run(recipe: RecipeBase, doc: Located | None = None) -> list[LayerInfo]:
    """Build the real model and push a zero batch of 2 through it (eval mode, no gradients).

    Everything static inference cannot see (plugin layers, torch's own checks) shows up here;
    a failure becomes a :class:`RecipeError` naming the layer, its input shape and its line in
    ``doc`` (the recipe as loaded, ``--set`` overrides applied, so a layer an override wrote is
    blamed on that ``--set``), not a stack trace. Returns the built layers (for a summary).
    """
    import torch

    from mnistkit.layers.modules import iter_layers
    from mnistkit.registry import registries

    reg = registries()

    def problem(ls: LayerSpec | None, message: str, hint: str = "", param: str | None = None) -> RecipeError:
        loc, field = ls.at(param) if ls is not None else (("model",), "model")
        return RecipeError([Problem(_where(doc, loc), field, message, hint)])

    in_shape = input_shape(recipe, reg)
    if in_shape is None:
        raise RecipeError(
            [
                Problem(
                    _where(doc, ("data", "dataset")),
                    "data.dataset",
                    f"dataset {recipe.data.dataset!r} declares no input shape, so --build "
                    "cannot make a batch for it",
                    "the plugin should register the dataset with shape=(C, H, W) meta",
                )
            ]
        )
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    layers = layer_specs(recipe, declared or PLACEHOLDER_CLASSES, reg)

    # The one building loop (iter_layers); the layer after the last one it yields is the one that failed.
    torch.manual_seed(recipe.seed)
    built: list[tuple[torch.nn.Module, LayerInfo]] = []
    try:
        for module, info in iter_layers([ls.spec for ls in layers], in_shape, reg):
            built.append((module, info))
    except ShapeError as exc:
        raise problem(layers[exc.index or 0], exc.message, exc.hint, exc.param) from None
    except Exception as exc:  # torch's own argument checks, or a plugin builder's bug
        i = len(built)
        shape = built[-1][1].out_shape if built else tuple(in_shape)
        raise problem(
            layers[i],
            f"layer {i} ({layers[i].spec['type']}): cannot be built for input {fmt(shape)}: "
            f"{type(exc).__name__}: {_first_line(exc)}",
        ) from None
    infos = [info for _, info in built]
    claimed = [info.out_shape for info in infos]

    model = torch.nn.Sequential(*(m for m, _ in built)).eval()
    inputs: dict[int, Shape] = {}
    current: list[int] = [-1]

    def pre_hook(idx: int) -> Callable[..., None]:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            current[0] = idx
            inputs[idx] = tuple(args[0].shape[1:])

        return hook

    def post_hook(idx: int) -> Callable[..., None]:
        # A builder (e.g. a plugin's) whose declared out_shape is not what its module produces
        # misleads every later layer and the summary: stop at the layer that lies.
        def hook(_m: Any, _args: tuple[Any, ...], out: Any) -> None:
            real = tuple(out.shape[1:])
            if real != claimed[idx]:
                raise _Mismatch(claimed[idx], real)

        return hook

    handles = [m.register_forward_pre_hook(pre_hook(i)) for i, m in enumerate(model)]
    handles += [m.register_forward_hook(post_hook(i)) for i, m in enumerate(model)]
    try:
        with torch.no_grad():
            y = model(torch.zeros((2, *in_shape)))
    except _Mismatch as exc:
        i = current[0]
        raise problem(
            layers[i],
            f"layer {i} ({layers[i].spec['type']}): its builder says it outputs "
            f"{fmt(exc.claimed)}, the forward pass gives {fmt(exc.real)}",
            "the layer's builder computes its out_shape wrongly",
        ) from None
    except Exception as exc:
        i = current[0]
        ls = layers[i] if i >= 0 else None
        kind = ls.spec["type"] if ls else "?"
        raise problem(
            ls,
            f"layer {i} ({kind}): forward pass failed on input {fmt(inputs.get(i, in_shape))} "
            f"(batch of 2): {type(exc).__name__}: {_first_line(exc)}",
        ) from None
    finally:
        for h in handles:
            h.remove()
    if declared is not None and tuple(y.shape[1:]) != (declared,):
        raise problem(layers[-1], *_output_mismatch(tuple(y.shape[1:]), declared, recipe))
    return infos


class _Mismatch(Exception):
    def __init__(self, claimed: Shape, real: Shape) -> None:
        self.claimed, self.real = claimed, real


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _where(doc: Located | None, loc: tuple[Any, ...]) -> str:
    return str(doc.where(loc)) if doc is not None else "<recipe>"
