"""Cross-field rules that a field's own type cannot say, and the resolved recipe as data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mnistkit.errors import Problem, dotted, set_hint
from mnistkit.recipe.balance import balance_problems
from mnistkit.recipe.expect import check_expectations
from mnistkit.recipe.model_check import OUTPUT_ONLY, check_model
from mnistkit.recipe.sections import (
    DataSection,
    ImageSpec,
    LogMel,
    Normalize,
    RecipeBase,
)
from mnistkit.recipe.yamlio import Located
from mnistkit.registry import registries as _registries
from mnistkit.registry.core import Registries
from mnistkit.registry.core import did_you_mean as _dym

Where = Callable[..., str]


def check_recipe(
    recipe: RecipeBase, reg: Registries, doc: Located | None = None
) -> tuple[RecipeBase, list[Problem]]:
    """Checks that span fields. Returns the recipe with context-dependent defaults filled in."""

    def where(*loc: Any, key: bool = False) -> str:
        return doc.where(tuple(loc), key=key) if doc else "<recipe>"

    m = recipe.model
    problems = _model_problems(recipe, reg, where)
    data, data_problems = _data_problems(recipe, reg, where)
    problems += data_problems
    problems += _training_problems(recipe, data.val_split > 0, where)
    problems += balance_problems(recipe, reg, where)
    problems += check_expectations(recipe, where)
    updated = recipe.model_copy(update={"data": data}) if data is not recipe.data else recipe
    if (m.hidden is None) != (m.layers is None):
        # Layer shapes, statically (pure Python, no torch): a layer that cannot take what the
        # previous one produces, or a model whose output is not one logit per class.
        problems += check_model(updated, reg, lambda loc, key: where(*loc, key=key))[0]
    return updated, problems


def _model_problems(recipe: RecipeBase, reg: Registries, where: Where) -> list[Problem]:
    """One way to give the layers; an output activation that fits the loss; MLP-only keys."""
    problems: list[Problem] = []
    m = recipe.model
    expects = reg.losses.get(recipe.loss.name).meta.get("expects", "logits")

    if (m.hidden is None) == (m.layers is None):
        problems.append(
            Problem(
                where("model", key=True),
                "model",
                "give exactly one of 'hidden' (MLP shorthand) or 'layers'",
                "hidden: [512, 256] builds an MLP; layers: [...] any network",
            )
        )
    if m.output_activation is not None:
        names = [*reg.activations.names(), *OUTPUT_ONLY]
        oa = m.output_activation
        if oa not in names:
            close = _dym(oa, names)
            problems.append(
                Problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    f"unknown output activation {oa!r}",
                    (f"did you mean {close}? " if close else "") + f"allowed: {', '.join(names)}",
                )
            )
        elif expects == "logits":
            problems.append(
                _logits_problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    oa,
                    recipe.loss.name,
                )
            )
        elif oa != "log_softmax":
            problems.append(
                Problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    f"{oa!r} cannot feed {recipe.loss.name}: it expects log-probabilities",
                    "use output_activation: log_softmax (or leave it unset: it is added)",
                )
            )
    if m.layers:
        last = m.layers[-1]
        last_type = getattr(last, "type", None)
        is_act = last_type in reg.activations or last_type in OUTPUT_ONLY
        if expects == "logits" and is_act:
            i = len(m.layers) - 1
            problems.append(
                _logits_problem(
                    where("model", "layers", i),
                    f"model.layers[{i}]",
                    str(last_type),
                    recipe.loss.name,
                    in_list=True,
                )
            )

    if m.layers is not None:
        for key in MLP_ONLY:
            if key in m.model_fields_set:
                problems.append(
                    Problem(
                        where("model", key, key=True),
                        f"model.{key}",
                        f"model.{key} applies to the MLP shorthand (model.hidden) and would be "
                        "ignored next to model.layers",
                        "put it in the layer list instead, e.g. {type: relu} or {type: dropout, p: 0.2} "
                        "between layers, or remove the key",
                    )
                )
    return problems


def _data_problems(recipe: RecipeBase, reg: Registries, where: Where) -> tuple[DataSection, list[Problem]]:
    """Keys the dataset does not read, features/image defaults by kind, normalize and augment
    ranges. Returns the data section with the kind's defaults filled in."""
    problems: list[Problem] = []
    kind = reg.datasets.get(recipe.data.dataset).meta.get("kind")
    data = recipe.data
    if data.num_workers is not None and data.loader == "memory":
        problems.append(
            Problem(
                where("data", "num_workers", key=True),
                "data.num_workers",
                "num_workers applies to loader: dataloader; the memory loader has no workers",
                set_hint("data.loader", "dataloader") + ", or remove num_workers",
            )
        )
    reads = _dataset_reads(recipe, reg)
    if reads is not None:
        for key in DATASET_OPTIONS:
            if key in data.model_fields_set and key not in reads:
                problems.append(
                    Problem(
                        where("data", key, key=True),
                        f"data.{key}",
                        f"dataset {data.dataset!r} does not use data.{key}: it would be ignored",
                        "remove the key (datasets that use it: "
                        + ", ".join(
                            n
                            for n in reg.datasets.names()
                            if key in (reg.datasets.get(n).meta.get("reads") or ())
                        )
                        + ")",
                    )
                )
    if kind == "audio" and data.features is None:
        data = data.model_copy(update={"features": LogMel()})
    if reads is not None and "image" in reads and data.image is None:
        data = data.model_copy(update={"image": ImageSpec()})
    if kind != "audio" and data.features is not None:
        problems.append(
            Problem(
                where("data", "features", key=True),
                "data.features",
                f"features apply to audio datasets; {data.dataset!r} is an image dataset",
                "remove data.features",
            )
        )
    if isinstance(data.normalize, Normalize) and len(data.normalize.mean) != len(data.normalize.std):
        problems.append(
            Problem(
                where("data", "normalize"),
                "data.normalize",
                "mean and std must have the same length (one value per channel)",
            )
        )

    for i, aug in enumerate(data.augment):
        for pname in reg.augmentations.get(aug.type).meta.get("ranges", ()):
            lo, hi = getattr(aug, pname)
            if lo > hi:
                problems.append(
                    Problem(
                        where("data", "augment", i, pname),
                        f"data.augment[{i}].{pname}",
                        f"[{lo:g}, {hi:g}] is a [low, high] range: low must not exceed high",
                        f"write [{hi:g}, {lo:g}]",
                    )
                )
    return data, problems


def _training_problems(recipe: RecipeBase, has_val: bool, where: Where) -> list[Problem]:
    """Nesterov without momentum; a val_* metric monitored without a validation split."""
    problems: list[Problem] = []
    opt = recipe.optimizer
    if getattr(opt, "nesterov", False) and getattr(opt, "momentum", 0) <= 0:
        problems.append(
            Problem(
                where("optimizer", "nesterov"),
                "optimizer.nesterov",
                "Nesterov momentum needs momentum > 0",
                set_hint("optimizer.momentum", "0.9"),
            )
        )

    t = recipe.train
    for loc, metric in (
        (("train", "best_metric"), t.best_metric),
        (
            ("train", "early_stopping", "metric"),
            t.early_stopping.metric if t.early_stopping else None,
        ),
        (("scheduler", "metric"), getattr(recipe.scheduler, "metric", None)),
    ):
        if metric and metric.startswith("val_") and not has_val:
            problems.append(
                Problem(
                    where(*loc),
                    dotted(loc),
                    f"{metric} needs a validation split",
                    set_hint("data.val_split", "0.1") + ", or monitor a test_* metric",
                )
            )
    return problems


def _logits_problem(where: str, field: str, act: str, loss: str, in_list: bool = False) -> Problem:
    fix = "Remove it, or use loss: nll (log_softmax is then added for you)."
    if in_list:
        # A list that ends in an activation is ambiguous (hidden activation before an implied head,
        # or an output activation?), so it is refused rather than guessed.
        fix = (
            "Remove it (a list that ends in any other layer gets a linear head to the class "
            "count added), or use loss: nll."
        )
    return Problem(
        where,
        field,
        f"{act!r} after the last layer cannot be used with loss {loss!r}",
        f"{loss} applies log_softmax itself (CrossEntropyLoss = log_softmax + NLLLoss), so the last "
        f"layer must output raw logits: an activation there squashes them and a softmax applies "
        f"it twice. {fix}",
    )


def resolved_dict(recipe: RecipeBase, reg: Registries | None = None) -> dict[str, Any]:
    """The fully resolved recipe as plain data (every default spelled out), re-runnable as is.

    Keys that do not apply to this recipe are left out rather than spelled out, because writing
    them is an error (:func:`check_recipe`): the MLP shorthand's ``activation``/``dropout`` next
    to ``model.layers``, and data options the dataset declares it does not read.
    """
    out = recipe.model_dump(mode="json")
    out.pop("base", None)  # resolved: complete in itself, whatever it was built on
    if out.get("seeds") is None:
        out.pop("seeds", None)  # one run: nothing to say (a group's runs each have their seed)
    if recipe.model.layers is not None:
        for key in MLP_ONLY:
            out["model"].pop(key, None)
    reads = _dataset_reads(recipe, reg or _registries())
    if reads is not None:
        for key in DATASET_OPTIONS:
            if key not in reads:
                out["data"].pop(key, None)
    return out


#: Model keys that belong to the MLP shorthand (``model.hidden``) only.
MLP_ONLY = ("activation", "dropout")
#: Data keys only some dataset loaders read; each dataset declares the ones it reads
#: (``reads`` meta in its registry entry; a plugin dataset without it is not checked).
DATASET_OPTIONS = ("skip_bad_files", "test_fraction", "image", "cache")


def _readers(reg: Registries, key: str) -> list[str]:
    return [n for n in reg.datasets.names() if key in (reg.datasets.get(n).meta.get("reads") or ())]


def _dataset_reads(recipe: RecipeBase, reg: Registries) -> tuple[str, ...] | None:
    name = recipe.data.dataset
    if name not in reg.datasets:
        return None
    reads = reg.datasets.get(name).meta.get("reads")
    return None if reads is None else tuple(reads)
