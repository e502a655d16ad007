"""The sweep file: a search space over a recipe's keys, validated like a recipe (no torch, no Optuna).

A sweep file names a base recipe and, for some of its dotted keys (exactly what ``--set`` takes),
a range or a list of choices. It is read with :mod:`mnistkit.recipe.yamlio` (positions, duplicate keys,
unsafe tags) and validated by the pydantic model below, with the recipe's own error translation
(``file:line:col``, "did you mean"). Every bound and choice is then checked against the recipe
field it feeds *by the recipe's own validation*: the value is applied to the base recipe with the
``--set`` mechanism and the result is validated (so ``optimizer.lr: {float: [0, 1]}`` is refused
because the recipe refuses ``lr: 0``, not because this module knows that lr must be > 0).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from mnistkit.errors import Problem, RecipeError
from mnistkit.recipe.yamlio import Located, apply_overrides, load_file
from mnistkit.sweeps import is_sweep_data, is_sweep_file  # noqa: F401  (kept importable from here)

PosInt = Annotated[StrictInt, Field(ge=1)]
# ParamSpec has fields named float and int: its annotations use these names instead.
_Float = float
_Int = StrictInt
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


def _name_shorthand(value: Any) -> Any:
    """``sampler: random`` means ``sampler: {name: random}``."""
    return {"name": value} if isinstance(value, str) else value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> Any:
    """``90`` (seconds), ``"90s"``, ``"30m"``, ``"2h"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 30m or 2h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m[1]) * _UNIT_S[m[2]]
    raise ValueError("expected a duration like 90s, 30m or 2h (or a number of seconds)")


class SamplerSpec(_Section):
    """How the next trial's parameters are chosen (Optuna samplers)."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    """tpe: Tree-structured Parzen Estimator (learns from finished trials); random; grid: every
    combination of the `choice` parameters, in a seeded random order."""
    seed: Annotated[StrictInt, Field(ge=0)] | None = 0
    """Sampler seed: the same single-worker sweep gives the same parameters in the same order.
    null: different every time. Extra workers derive their own seeds from it."""
    startup_trials: Annotated[StrictInt, Field(ge=0)] = 10
    """tpe: random trials before the model of good/bad regions is used (Optuna's default, 10)."""


class PrunerSpec(_Section):
    """Stopping unpromising trials early, from the metric reported after every epoch."""

    name: Literal["none", "median", "hyperband"] = "median"
    """median: stop a trial whose metric is worse than the median of earlier trials at the same
    epoch; hyperband: successive halving over epoch budgets; none: every trial runs all epochs."""
    warmup_epochs: Annotated[StrictInt, Field(ge=0)] = 1
    """median: epochs a trial always runs before it may be pruned. 1 because the first epoch's
    metric mostly reflects the learning rate's warm start, not where the trial ends up."""
    startup_trials: Annotated[StrictInt, Field(ge=0)] = 5
    """median: trials that finish unpruned before pruning starts (Optuna's default, 5)."""
    reduction_factor: Annotated[StrictInt, Field(ge=2)] = 3
    """hyperband: keep the best 1/reduction_factor of trials at each rung."""


class HeartbeatSpec(_Section):
    """Detecting workers that died (kill -9, a lost machine): their trials are retried."""

    interval: PosInt = 10
    """Seconds between a running trial's heartbeats in the storage."""
    grace: PosInt = 30
    """A running trial whose last heartbeat is older than this many seconds is stale: it is
    failed and retried from its last checkpoint. 3 intervals: a busy machine may delay one."""
    retries: Annotated[StrictInt, Field(ge=0)] = 3
    """How often one trial is retried after its worker died before it stays FAIL."""


class ParamSpec(_Section):
    """One searched key: exactly one of float, int or choice."""

    float: tuple[_Float, _Float] | None = None
    """[low, high]: a real value in this range."""
    int: tuple[_Int, _Int] | None = None
    """[low, high]: an integer in this range (both included)."""
    choice: list[Any] | None = Field(None, min_length=1)
    """The values to choose from (any YAML value a recipe key takes, lists included)."""
    log: StrictBool = False
    """Sample on a log scale (low must be > 0): for learning rates, weight decay."""
    step: Annotated[_Float, Field(gt=0)] | None = None
    """Only multiples of step above low (int ranges: default 1)."""


class SweepFile(_Section):
    """A hyperparameter search over a recipe (see docs/sweeps.md)."""

    recipe: str
    """The base recipe, relative to the sweep file."""
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)] | None = None
    """Study name in the storage; default: the sweep file's name."""
    metric: Literal[METRICS] = "val_acc"  # type: ignore[valid-type]
    """The metrics.csv column to optimize, read after the last epoch (and after every epoch for
    pruning). Tuning on test_* tunes on the test set: allowed, but warned about."""
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    """'auto': maximize *_acc, minimize *_loss."""
    trials: PosInt
    """The budget: finished trials (COMPLETE, PRUNED or FAIL) in the study, across all workers and
    restarts. Trials retried after a worker died count once."""
    timeout: Annotated[float, BeforeValidator(_duration), Field(gt=0)] | None = None
    """Wall-clock budget per worker (90s, 30m, 2h): no new trial starts after it."""
    sampler: Annotated[SamplerSpec, BeforeValidator(_name_shorthand)] = SamplerSpec()
    """Sampler: tpe | random | grid, and its seed."""
    pruner: Annotated[PrunerSpec, BeforeValidator(_name_shorthand)] = PrunerSpec()
    """Pruner: median | hyperband | none."""
    heartbeat: HeartbeatSpec = HeartbeatSpec()
    """Dead-worker detection and retries."""
    set: dict[str, Any] = {}
    """Fixed changes to the base recipe, {dotted key: value}, exactly like --set (applied first;
    the command line's --set comes after them)."""
    params: dict[str, ParamSpec] = Field(min_length=1)
    """Dotted recipe keys, exactly as --set takes them, each with a range or choices."""


# ------------------------------------------------------------------------------ loading
@dataclass
class Sweep:
    """A validated sweep: the file's settings, its base recipe and where it came from."""

    spec: SweepFile
    path: Path
    recipe_path: Path
    base: Any  # the validated base Recipe (with the command line's --set applied)
    base_doc: Located  # the base recipe document (with --set applied), to derive trial recipes from
    overrides: list[str]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def study_name(self) -> str:
        return self.spec.study or re.sub(r"[^A-Za-z0-9_.-]", "-", self.path.stem)

    @property
    def direction(self) -> str:
        if self.spec.direction != "auto":
            return self.spec.direction
        return "maximize" if self.spec.metric.endswith("_acc") else "minimize"

    def trial_recipe(self, params: dict[str, Any], number: int) -> Any:
        """The exact recipe trial ``number`` runs: base + params, seed = base seed + number."""
        return self.trial_recipe_located(params, number)[0]

    def trial_recipe_located(self, params: dict[str, Any], number: int) -> tuple[Any, dict[str, str]]:
        """:meth:`trial_recipe`, and where each of its values was written (the trial's
        origins.json): the base recipe's lines, the sweep file's ``set:`` lines, --set, and the
        trial's parameters, seed and name as the sweep's."""
        from mnistkit.recipe.schema import validate_document

        doc = copy.deepcopy(self.base_doc)
        sets = [_set_arg(p, v) for p, v in params.items()]
        sets += [f"seed={self.base.seed + number}", f"name={self.base.name}-t{number:04d}"]
        _apply(doc, sets)
        recipe = validate_document(doc, [], default_name=self.base.name, base_dir=self.recipe_path.parent)
        # The sweep file's `set:` lines are the sweep's own, not a `base:` recipe's.
        own = f"base: {self.path}:"
        origins = {k: v.removeprefix("base: ") if v.startswith(own) else v for k, v in doc.origins().items()}
        sweep = f"sweep {self.path.name}"
        origins.update({key: f"{sweep}: trial {number}'s params.{key}" for key in params})
        origins["seed"] = f"{sweep}: the recipe's seed {self.base.seed} + trial number {number}"
        origins["name"] = f"{sweep}: trial {number}"
        return recipe, origins


def _apply(doc: Located, sets: list[str]) -> None:
    """``apply_overrides`` exactly as ``--set`` on ``mnistkit run`` applies it: a key inside a bare
    name (``loss.label_smoothing`` over ``loss: cross_entropy``) expands the name."""
    from mnistkit.recipe.schema import SHORTHAND

    apply_overrides(doc, sets, SHORTHAND)


def _set_arg(path: str, value: Any) -> str:
    # JSON is YAML: lists, numbers and strings come back exactly as they were.
    return f"{path}={json.dumps(value)}"


def apply_located(doc: Located, path: str, value: Any, key_pos: str, value_pos: str) -> None:
    """``--set path=value`` on ``doc``, with problems it causes placed at the given positions
    (a key or value of the sweep file) instead of at a --set argument."""
    label = f"--set {_set_arg(path, value)}"
    _apply(doc, [_set_arg(path, value)])
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for n in range(1, len(parts) + 1):
        prefix = tuple(parts[:n])
        if doc.keys.get(prefix, label) == label:  # new here, or just set: point into the sweep
            doc.keys[prefix] = key_pos
            doc.values[prefix] = value_pos if n == len(parts) else key_pos


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file and its base recipe; every problem at once (RecipeError)."""
    from mnistkit.recipe.schema import _problem, validate_document

    path = Path(path)
    doc = load_file(path)
    if not isinstance(doc.data, dict):
        raise RecipeError([Problem(doc.where(()), "", "a sweep file must be a mapping of keys")])
    try:
        spec = SweepFile.model_validate(doc.data)
    except ValidationError as exc:
        raise RecipeError([_problem(err, doc, SweepFile) for err in exc.errors()]) from None

    problems: list[Problem] = []
    warnings: list[Problem] = []
    bad: set[str] = set()
    for name, ps in spec.params.items():
        found = _range_problems(doc, name, ps, spec.sampler.name)
        problems += found
        bad |= {name} if found else set()

    recipe_path = (path.parent / spec.recipe) if not Path(spec.recipe).is_absolute() else Path(spec.recipe)
    if not recipe_path.is_file():
        problems.append(
            Problem(
                doc.where(("recipe",)),
                "recipe",
                f"recipe file not found: {recipe_path}",
                "the path is relative to the sweep file",
            )
        )
        raise RecipeError(problems)
    base_doc = load_file(recipe_path)
    # The base recipe's expect: block states what that recipe reaches as written; a trial is
    # another recipe (other values, often fewer epochs), so it is not judged by it, and neither
    # is best.yaml. The sweep's own set: may give trials expectations again.
    _apply(base_doc, ["expect=null"])
    for key, value in spec.set.items():  # problems they cause point into the sweep file
        loc = ("set", key)
        apply_located(base_doc, key, value, doc.where(loc, key=True), doc.where(loc))
    _apply(base_doc, overrides or [])
    try:  # the base recipe's own problems, at their positions
        base = validate_document(
            copy.deepcopy(base_doc), [], default_name=recipe_path.stem, base_dir=recipe_path.parent
        )
    except RecipeError as exc:
        raise RecipeError(problems + exc.problems) from None
    base_doc.data.setdefault("name", base.name)  # trials are named after the recipe file

    if spec.metric.startswith("val_") and base.data.val_split <= 0 and "data.val_split" not in spec.params:
        problems.append(
            Problem(
                doc.where(("metric",)),
                "metric",
                f"{spec.metric} needs a validation split, and {recipe_path.name} has none",
                "set data.val_split in the recipe (e.g. 0.1), or give --set data.val_split=0.1",
            )
        )
    if spec.metric.startswith("test_"):
        warnings.append(
            Problem(
                doc.where(("metric",)),
                "metric",
                f"tuning on {spec.metric} tunes on the test set: the best trial's test score is optimistic",
                "hold out a validation split (data.val_split) and use metric: val_acc",
            )
        )
    problems += _feed_problems(doc, spec, base_doc, recipe_path, bad, warnings)
    if problems:
        raise RecipeError(problems)
    return Sweep(spec, path, recipe_path, base, base_doc, list(overrides or []), warnings)


def _range_problems(doc: Located, name: str, ps: ParamSpec, sampler: str) -> list[Problem]:
    """The search-space rules of one parameter (not the recipe's: those are checked by feeding)."""
    loc = ("params", name)
    field_ = f"params.{name}"
    kinds = [k for k in ("float", "int", "choice") if getattr(ps, k) is not None]
    if len(kinds) != 1:
        return [
            Problem(
                doc.where(loc),
                field_,
                "give exactly one of float: [low, high], int: [low, high] or choice: [...]"
                + (f" (got {', '.join(kinds)})" if kinds else ""),
                "e.g. optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}",
            )
        ]
    kind = kinds[0]
    out: list[Problem] = []
    if kind == "choice":
        for key in ("log", "step"):
            if key in doc.data["params"][name]:
                out.append(
                    Problem(doc.where((*loc, key), key=True), f"{field_}.{key}", f"{key} applies to ranges")
                )
        return out
    low, high = getattr(ps, kind)
    if low >= high:
        out.append(
            Problem(
                doc.where((*loc, kind)),
                f"{field_}.{kind}",
                f"low ({low}) must be smaller than high ({high})",
                "for a fixed value, set it in the recipe instead",
            )
        )
    if ps.log and low <= 0:
        out.append(
            Problem(
                doc.where((*loc, kind, 0)),
                f"{field_}.{kind}",
                f"log: true needs a lower bound > 0 (got {low})",
                "a log scale has no 0: start at a small positive value, e.g. 1.0e-5",
            )
        )
    if ps.log and ps.step is not None:
        out.append(
            Problem(
                doc.where((*loc, "step"), key=True), f"{field_}.step", "step cannot be used with log: true"
            )
        )
    if kind == "int" and ps.step is not None and ps.step != int(ps.step):
        out.append(
            Problem(
                doc.where((*loc, "step")),
                f"{field_}.step",
                f"an int range needs an integer step (got {ps.step})",
            )
        )
    if sampler == "grid":
        out.append(
            Problem(
                doc.where(loc, key=True),
                field_,
                "the grid sampler needs choice: [...] for every parameter",
                "list the values to try, or use sampler: tpe / random for ranges",
            )
        )
    return out


def _candidates(doc: Located, name: str, ps: ParamSpec) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """(what, value, position) of every value a parameter can take at its extremes."""
    loc = ("params", name)
    if ps.choice is not None:
        return [(f"choice {v!r}", v, (*loc, "choice", i)) for i, v in enumerate(ps.choice)]
    kind = "float" if ps.float is not None else "int"
    low, high = getattr(ps, kind)
    return [
        ("lower bound", low, (*loc, kind, 0)),
        ("upper bound", high, (*loc, kind, 1)),
    ]


MAX_COMBOS = 64  # other choice parameters' combinations tried before a value is refused


def _feed_problems(
    doc: Located,
    spec: SweepFile,
    base_doc: Located,
    recipe_path: Path,
    skip: set[str],
    warnings: list[Problem],
) -> list[Problem]:
    """Apply every bound and choice to the base recipe as ``--set`` does and validate the result."""
    from mnistkit.recipe.schema import validate_document

    def attempt(name: str, value: Any, vloc: tuple[Any, ...], others: list[str]) -> list[Problem]:
        trial = copy.deepcopy(base_doc)
        _apply(trial, others)
        apply_located(trial, name, value, doc.where(("params", name), key=True), doc.where(vloc))
        try:
            validate_document(trial, [], default_name="sweep", base_dir=recipe_path.parent)
        except RecipeError as exc:
            return exc.problems
        return []

    choice_sets = {
        n: [_set_arg(n, v) for v in ps.choice] for n, ps in spec.params.items() if ps.choice is not None
    }
    problems: list[Problem] = []
    for name, ps in spec.params.items():
        if name in skip:
            continue
        others = [sets for n, sets in choice_sets.items() if n != name]
        combos = list(itertools.islice(itertools.product(*others), MAX_COMBOS))
        for what, value, vloc in _candidates(doc, name, ps):
            found = attempt(name, value, vloc, [])
            # A value may be valid together with another parameter's choice (momentum with sgd).
            if not found:
                continue
            if any(not attempt(name, value, vloc, list(c)) for c in combos if c):
                warnings.append(
                    Problem(
                        doc.where(vloc),
                        f"params.{name}",
                        f"{what} is valid only with some choices of the other parameters "
                        f"({found[0].message})",
                        "trials that combine it with the others fail as invalid (FAIL, counted)",
                    )
                )
                break  # one note per parameter
            unknown = [p for p in found if p.message.startswith("unknown key") and p.field == name]
            if unknown:  # the path itself is not a recipe key: one message for the parameter
                p = unknown[0]
                problems.append(Problem(p.where, f"params.{name}", f"not a recipe key: {p.message}", p.hint))
                break
            for p in found:
                same = p.field == name or name.startswith(p.field + ".") or p.field.startswith(name)
                msg = p.message if same else f"{p.field}: {p.message}"
                problems.append(Problem(doc.where(vloc), f"params.{name}", f"{what}: {msg}", p.hint))
    return problems
