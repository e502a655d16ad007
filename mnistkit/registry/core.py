"""Registries: the names a recipe may use, each mapped to a *lazy* target.

A registry entry is pure data: a name, a target given as ``"module:attr"`` (imported only when
the entry is created, so ``mnistkit list``/``validate`` never import torch), a one-line
description, and the parameters the entry accepts with their types and ranges. The recipe schema
is generated from these declarations, so validation needs no torch either.

Nothing registers itself on import. The built-in entries are added by
:func:`mnistkit.registry.builtins.register_builtins` when :func:`registries` is first called; users add
their own through a plugin module (``plugins:`` in a recipe, or the ``mnistkit.plugins``
entry-point group) whose ``register(reg)`` function is called explicitly.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

REQUIRED: Any = ...  # marks a parameter that has no default

PARAM_TYPES = (
    "int",
    "float",
    "bool",
    "str",
    "float_pair",
    "int_pair",
    "int_list",
    "int_or_pair",
    "class_weights",
)


@dataclass(frozen=True)
class Param:
    """One parameter of a registry entry: type, default and allowed range, for validation."""

    type: str
    default: Any = REQUIRED
    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    #: Name of the keyword in the target's signature, when the recipe spells it differently.
    target_name: str | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"unknown param type {self.type!r}; use one of {PARAM_TYPES}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """Short human text, values spelt as in YAML: ``float, > 0, default 0.01``."""
        bits = [_TYPE_WORDS.get(self.type, self.type)]
        for op, val in (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt)):
            if val is not None:
                bits.append(f"{op} {val:g}")
        if self.choices:
            bits = ["one of " + ", ".join(map(_yaml_text, self.choices))]
        if self.nullable:
            bits.append("or null")
        bits.append("required" if self.required else f"default {_yaml_text(self.default)}")
        return ", ".join(bits)


_TYPE_WORDS = {
    "float_pair": "pair of floats",
    "int_pair": "pair of ints",
    "int_list": "list of ints",
    "int_or_pair": "int or pair of ints",
    "class_weights": "auto or a list of floats > 0, one per class",
}


def _yaml_text(value: Any) -> str:
    """A default as a recipe would spell it: true, null, [0.9, 0.999] (not True, None, (..))."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Entry:
    """A named, lazily imported thing a recipe can refer to."""

    name: str
    target: str | Callable[..., Any]
    description: str
    params: dict[str, Param] = field(default_factory=dict)
    #: Free-form static facts used at validation time (e.g. a dataset's input shape).
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        """Import and return the target (a class or factory)."""
        return load_target(self.target)

    def renamed(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Recipe keys renamed to the target's keywords (``target_name``); undeclared keys kept."""
        return {(self.params[k].target_name or k) if k in self.params else k: v for k, v in given.items()}

    def arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter, ``given`` or else its declared default, renamed for the target.

        This is how layer builders and shape functions are called: the declaration is the one
        place that holds the names and defaults, so the targets repeat neither.
        """
        missing = [k for k, p in self.params.items() if p.required and k not in given]
        if missing:
            # What Python itself would raise for a missing keyword-only argument.
            raise TypeError(f"{self.name}: missing required parameter(s) {', '.join(missing)}")
        filled = {k: p.default for k, p in self.params.items() if k not in given}
        return self.renamed({**given, **filled})

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the target with recipe parameters (renamed to target keywords)."""
        return self.load()(*args, **self.renamed(kwargs))


def load_target(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """A ``"module:attr.attr"`` target imported (a callable is returned as is)."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


class UnknownName(KeyError):
    """A name that is not registered; the message lists what is and suggests the closest."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(name)

    def __str__(self) -> str:
        msg = f"unknown {self.kind} {self.name!r}"
        close = did_you_mean(self.name, self.known)
        if close:
            msg += f"; did you mean {close}?"
        return msg + f" (known: {', '.join(self.known)})"


#: What users of other tools write for a name mnistkit spells differently (suggested by meaning,
#: where spelling alone finds nothing close): Keras/TF/PyTorch-Lightning vocabulary.
SYNONYMS: dict[str, str] = {
    "gpu": "cuda",
    "cuda:0": "cuda",
    "dense": "linear",
    "fc": "linear",
    "fully_connected": "linear",
    "conv": "conv2d",
    "convolution": "conv2d",
    "maxpool": "maxpool2d",
    "max_pool": "maxpool2d",
    "avgpool": "avgpool2d",
    "batchnorm": "batchnorm2d",
    "batch_norm": "batchnorm2d",
    "bn": "batchnorm2d",
    "rnn": "lstm",
    "crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "ce": "cross_entropy",
    "nllloss": "nll",
    "leakyrelu": "leaky_relu",
    "swish": "silu",
    "float32": "fp32",
    "bfloat16": "bf16",
    "cosine_annealing": "cosine",
    "one_cycle": "onecycle",
    "reduce_on_plateau": "plateau",
    "reducelronplateau": "plateau",
}


def did_you_mean(word: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """``'relu'`` or ``'relu' or 'elu'`` for the candidates closest to ``word``, else None.

    Case is ignored (``ReLU`` -> ``'relu'``), and a word from another tool's vocabulary is
    answered by meaning (``gpu`` -> ``'cuda'``, ``dense`` -> ``'linear'``, see :data:`SYNONYMS`).
    """
    names = [str(c) for c in candidates]
    key = str(word).strip().lower().replace("-", "_")
    by_case = [c for c in names if c.lower() == key]
    if by_case:
        return repr(by_case[0])
    meant = SYNONYMS.get(key) or SYNONYMS.get(key.replace("_", ""))
    if meant in names:
        return repr(meant)
    close = difflib.get_close_matches(str(word), names, n=2, cutoff=0.6)
    return " or ".join(repr(c) for c in close) or None


class Registry:
    """Name → :class:`Entry` for one kind of component (activations, optimizers, ...)."""

    def __init__(self, kind: str, description: str) -> None:
        self.kind = kind
        self.description = description
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        target: str | Callable[..., Any],
        description: str,
        params: dict[str, Param] | None = None,
        *,
        replace: bool = False,
        **meta: Any,
    ) -> Entry:
        """Add an entry. Names are recipe identifiers: lowercase, digits and ``_``."""
        if not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.kind} name {name!r}: use lowercase letters, digits and _")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True)")
        entry = Entry(name, target, description, dict(params or {}), dict(meta))
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).create(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class Registries:
    """All registries of one session. Plugins receive this object in ``register(reg)``."""

    def __init__(self) -> None:
        self.activations = Registry("activation", "non-linearities for model.activation and layers")
        self.losses = Registry("loss", "training objectives (recipe key: loss)")
        self.optimizers = Registry("optimizer", "parameter update rules (recipe key: optimizer)")
        self.schedulers = Registry("scheduler", "learning-rate schedules (recipe key: scheduler)")
        self.datasets = Registry("dataset", "data sources (recipe key: data.dataset)")
        self.layers = Registry("layer", "building blocks for model.layers (key: type)")
        self.augmentations = Registry(
            "augmentation", "random changes to training batches (recipe key: data.augment, key: type)"
        )
        self.plugins_loaded: list[str] = []
        #: bumps whenever a plugin is loaded, so generated schemas can be cached per version.
        self.version = 0

    def by_kind(self) -> dict[str, Registry]:
        return {
            "activations": self.activations,
            "losses": self.losses,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "datasets": self.datasets,
            "layers": self.layers,
            "augmentations": self.augmentations,
        }

    def load_plugin(self, module_name: str) -> None:
        """Import ``module_name`` and call its ``register(reg)`` function (once per module)."""
        if module_name in self.plugins_loaded:
            return
        module = importlib.import_module(module_name)
        hook = getattr(module, "register", None)
        if not callable(hook):
            raise PluginError(
                f"plugin module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                "register(reg) function; define one that calls reg.<kind>.register(...)"
            )
        hook(self)
        self.plugins_loaded.append(module_name)
        self.version += 1


class PluginError(Exception):
    """A plugin that cannot be imported or does not follow the plugin protocol."""
