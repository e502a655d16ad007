"""The recipe's model as a layer list, and its static shape check (pure Python, no torch).

``layer_specs`` expands the MLP shorthand (``model.hidden``) and an explicit ``model.layers`` list
into the same ``{type: ..., **params}`` vocabulary, remembering where each layer was written, so
both validation (:func:`check_model`, called by the recipe's cross-field rules) and the builder
(:mod:`mnistkit.build`) read one expansion. The shape arithmetic itself is
:mod:`mnistkit.layers.shapes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnistkit.errors import Problem, dotted
from mnistkit.layers.shapes import Shape, fmt, infer
from mnistkit.recipe.sections import LogMel, RecipeBase
from mnistkit.registry.core import Registries

#: Class count used to build the head when the dataset does not declare one (audio_folder):
#: only for shape checks; the real run takes it from the data.
PLACEHOLDER_CLASSES = 2
#: Layer types that may only end a model (an output activation, not a hidden one).
OUTPUT_ONLY = ("softmax", "log_softmax")


# ----------------------------------------------------------------------- the model's layer list
@dataclass(frozen=True)
class LayerSpec:
    """One layer of the model as built: ``{type: ..., **params}`` plus where the recipe says so."""

    spec: dict[str, Any]
    loc: tuple[Any, ...]  # path in the recipe document, for file:line:col
    field: str  # dotted field name for messages, "model.layers[3]"

    def at(self, param: str | None) -> tuple[tuple[Any, ...], str]:
        """(loc, field) of one of this layer's parameters, when the recipe wrote the layer."""
        written = len(self.loc) == 3 and self.loc[:2] == ("model", "layers")
        if param is None or not written:
            return self.loc, self.field
        return (*self.loc, param), f"{self.field}.{param}"


def layer_specs(recipe: RecipeBase, num_classes: int, reg: Registries) -> list[LayerSpec]:
    """The model as an explicit layer list; the MLP shorthand expands to the same vocabulary."""
    m = recipe.model
    expects = reg.losses.get(recipe.loss.name).meta.get("expects", "logits")
    out: list[LayerSpec] = []
    if m.layers is not None:
        for i, layer in enumerate(m.layers):
            loc = ("model", "layers", i)
            out.append(LayerSpec(layer.model_dump(), loc, dotted(loc)))
        # The classifier head: a final linear to num_classes unless the list already ends in a
        # linear (its width is checked against the class count) or an output activation, so
        # recipes need not know the class count.
        last = out[-1].spec["type"]
        if last != "linear" and last not in OUTPUT_ONLY:
            head = {"type": "linear", "out_features": num_classes, "bias": True}
            out.append(LayerSpec(head, ("model", "layers"), "model.layers (classifier head)"))
    else:
        act = m.activation.model_dump()
        act_name = act.pop("name")
        out.append(LayerSpec({"type": "flatten"}, ("model", "hidden"), "model.hidden"))
        for j, width in enumerate(m.hidden or []):
            loc = ("model", "hidden", j)
            out.append(LayerSpec({"type": "linear", "out_features": width, "bias": True}, loc, dotted(loc)))
            out.append(LayerSpec({"type": act_name, **act}, ("model", "activation"), "model.activation"))
            if m.dropout > 0:
                out.append(
                    LayerSpec({"type": "dropout", "p": m.dropout}, ("model", "dropout"), "model.dropout")
                )
        # No activation after the last linear: cross_entropy needs raw logits.
        head = {"type": "linear", "out_features": num_classes, "bias": True}
        out.append(LayerSpec(head, ("model", "hidden"), "model.hidden (classifier head)"))
        if m.output_activation and m.output_activation != "log_softmax":
            loc = ("model", "output_activation")
            out.append(LayerSpec({"type": m.output_activation}, loc, dotted(loc)))
    if expects == "log_probs" and out[-1].spec["type"] != "log_softmax":
        # nll needs log-probabilities
        out.append(LayerSpec({"type": "log_softmax"}, ("loss",), "loss (log_softmax for nll)"))
    return out


def input_shape(recipe: RecipeBase, reg: Registries) -> Shape | None:
    """Per-sample input shape from the dataset declaration, or None when it declares none.

    Image datasets declare ``shape`` in their registry meta; audio datasets give
    ``(1, n_mels, frames)`` from ``data.features`` (one log-mel map per clip); image folders
    ``(channels, *size)`` from ``data.image``.
    """
    meta = reg.datasets.get(recipe.data.dataset).meta
    if recipe.data.image is not None:  # image_folder: data.image, filled in by the recipe check
        return (recipe.data.image.channels, *recipe.data.image.size)
    if meta.get("shape"):
        return tuple(int(n) for n in meta["shape"])
    if meta.get("kind") == "audio":
        f = recipe.data.features
        if f is None:
            f = LogMel()
        return (1, f.n_mels, f.frames)
    return None


Where = Callable[[tuple[Any, ...], bool], str]


def check_model(recipe: RecipeBase, reg: Registries, where: Where) -> tuple[list[Problem], list[str]]:
    """Static shape check of the recipe's model: (problems, notes). Called by check_recipe.

    ``where(loc, key)`` turns a document path into ``file:line:col``. Notes say what could not be
    checked statically (no input shape, a plugin layer without a shape function).
    """
    in_shape = input_shape(recipe, reg)
    if in_shape is None:
        return [], [
            f"dataset {recipe.data.dataset!r} declares no input shape: layer shapes are checked "
            "when the model is built (mnistkit validate --build, or at the start of a run)"
        ]
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    layers = layer_specs(recipe, declared or PLACEHOLDER_CLASSES, reg)
    result = infer([ls.spec for ls in layers], in_shape, reg)
    if result.error is not None:
        idx = result.error.index or 0
        ls = layers[idx]
        loc, field = ls.at(result.error.param)
        return [Problem(where(loc, False), field, result.error.message, result.error.hint)], []
    if result.skipped_at is not None:
        i = result.skipped_at
        kind = layers[i].spec["type"]
        return [], [
            f"layer {i} ({kind}) has no shape function: shapes from layer {i} on are checked by "
            "`mnistkit validate --build` (or at the start of a run)"
        ]
    out = result.shapes[-1]
    if declared is not None and out != (declared,):
        ls = layers[-1]
        return [Problem(where(ls.loc, False), ls.field, *_output_mismatch(out, declared, recipe))], []
    return [], []


def _output_mismatch(out: Shape, num_classes: int, recipe: RecipeBase) -> tuple[str, str]:
    n = len(out)
    if n == 1:
        return (
            f"the model outputs {out[0]} values per sample, but {recipe.data.dataset} has "
            f"{num_classes} classes",
            f"set the last linear layer's out_features to {num_classes} (or leave that layer "
            "out: a list that does not end in a linear gets a classifier head appended)",
        )
    return (
        f"the model outputs shape {fmt(out)} per sample; a classifier needs ({num_classes},)",
        "reduce to one vector per sample before the classifier: flatten, adaptive_avgpool2d + "
        "flatten, attention_pool, or an lstm/gru with return: last",
    )


def model_size(recipe: RecipeBase, reg: Registries, num_classes: int | None = None) -> int | None:
    """The model's learnable parameters, counted without torch; None when a layer's count (or
    the input shape) is not known statically. With a dataset that declares no class count the
    head is counted for ``num_classes`` (default 2), so the default figure is a lower bound there."""
    in_shape = input_shape(recipe, reg)
    if in_shape is None:
        return None
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    layers = layer_specs(recipe, declared or num_classes or PLACEHOLDER_CLASSES, reg)
    return infer([ls.spec for ls in layers], in_shape, reg).parameters


def describe_model_size(recipe: RecipeBase, reg: Registries) -> str | None:
    """What ``mnistkit validate`` says of the model's size; for a dataset whose classes are its
    folders (unknown to validate), the class count the figure assumes and what each further
    class adds."""
    size = model_size(recipe, reg)
    if size is None:
        return None
    if reg.datasets.get(recipe.data.dataset).meta.get("num_classes") is not None:
        return describe_size(size)
    more = model_size(recipe, reg, PLACEHOLDER_CLASSES + 1)
    per_class = f", +{more - size:,} per further class" if more is not None and more > size else ""
    return (
        f"{describe_size(size)} counted for {PLACEHOLDER_CLASSES} classes{per_class}: "
        "the classes are the data's class folders, which validate does not read"
    )


def describe_size(parameters: int) -> str:
    """``575,050 parameters, 2.3 MB of float32 weights``."""
    mb = parameters * 4 / 1e6
    size = f"{mb:,.1f} MB" if mb < 1000 else f"{mb / 1000:,.1f} GB"
    return f"{parameters:,} parameters, {size} of float32 weights"


def static_notes(recipe: RecipeBase, reg: Registries) -> list[str]:
    """What static validation could not check for ``recipe`` (for ``mnistkit validate``)."""
    if recipe.model.layers is None and recipe.model.hidden is None:
        return []
    return check_model(recipe, reg, lambda loc, key: "")[1]
