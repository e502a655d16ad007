"""Registries: declarations match the real signatures, lookups stay lazy, plugins plug in.

A declaration that drifts from its target (a renamed keyword, a changed default) would either
crash at build time or silently train with a different value than `mnistkit list` shows; these
tests compare every declaration with ``inspect.signature`` of what it points at. They iterate
over the registries, so a new entry is checked without changing this file.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, load_recipe_text, recipe_model
from mnistkit.registry import (
    ENTRY_POINT_GROUP,
    Entry,
    Param,
    Registries,
    UnknownName,
    did_you_mean,
    registries,
    reset_registries,
)
from mnistkit.registry.builtins import register_builtins

REPO = Path(__file__).resolve().parents[1]
EMPTY = inspect.Parameter.empty
BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _builtins() -> Registries:
    reg = Registries()
    register_builtins(reg)
    return reg


BUILTINS = _builtins()


def entries(*kinds: str) -> list[Any]:
    return [
        pytest.param(kind, e.name, id=f"{kind}:{e.name}") for kind in kinds for e in BUILTINS.by_kind()[kind]
    ]


def same_default(declared: Any, actual: Any) -> bool:
    """Equal values, with bools only equal to bools (False == 0 would hide a type mix-up)."""
    if isinstance(declared, bool) or isinstance(actual, bool):
        return type(declared) is type(actual) and declared == actual
    if isinstance(declared, tuple | list) and isinstance(actual, tuple | list):
        return tuple(declared) == tuple(actual)
    return declared == actual


def check_params_against(entry: Entry, sig: inspect.Signature) -> None:
    """Every declared parameter is a keyword of ``sig`` with the same default (or none)."""
    for pname, p in entry.params.items():
        target = p.target_name or pname
        assert target in sig.parameters, (
            f"{entry.name}: declared parameter {pname!r} -> {target!r} is not in {sig}"
        )
        sp = sig.parameters[target]
        assert sp.kind in BY_KEYWORD, f"{entry.name}.{pname} cannot be passed by keyword"
        if p.required:
            assert sp.default is EMPTY, f"{entry.name}.{pname}: declared required, target has a default"
        else:
            assert sp.default is not EMPTY, f"{entry.name}.{pname}: target requires it"
            assert same_default(p.default, sp.default), (
                f"{entry.name}.{pname}: declared default {p.default!r}, target's {sp.default!r}"
            )


# ----------------------------------------------------------------- torch classes (lazy targets)
@pytest.mark.parametrize("kind,name", entries("activations", "losses", "optimizers"))
def test_torch_declarations_match_signatures(kind: str, name: str) -> None:
    entry = BUILTINS.by_kind()[kind].get(name)
    check_params_against(entry, inspect.signature(entry.load()))


@pytest.mark.parametrize("name", [e.name for e in BUILTINS.optimizers])
def test_optimizer_declares_lr_first(name: str) -> None:
    # build_optimizer passes the model parameters positionally, everything else by keyword.
    sig = inspect.signature(BUILTINS.optimizers.get(name).load())
    assert next(iter(sig.parameters)) == "params"
    assert "lr" in BUILTINS.optimizers.get(name).params


# ------------------------------------------------------------------------- mnistkit factories
def _keyword_only(sig: inspect.Signature, skip: set[str]) -> dict[str, inspect.Parameter]:
    return {
        n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in skip
    }


@pytest.mark.parametrize("kind,name", entries("schedulers"))
def test_scheduler_declarations_match_factories(kind: str, name: str) -> None:
    entry = BUILTINS.schedulers.get(name)
    assert entry.target.startswith("mnistkit.build.schedules:")
    sig = inspect.signature(entry.load())
    first = next(iter(sig.parameters.values()))
    assert first.name == "optimizer" and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    # build_schedule supplies these two; every other keyword must be declared, and only those.
    for supplied in ("epochs", "steps_per_epoch"):
        assert sig.parameters[supplied].kind is inspect.Parameter.KEYWORD_ONLY
    declared = {p.target_name or n for n, p in entry.params.items()}
    assert set(_keyword_only(sig, {"epochs", "steps_per_epoch"})) == declared
    check_params_against(entry, sig)


@pytest.mark.parametrize("kind,name", entries("augmentations"))
def test_augmentation_declarations_match_factories(kind: str, name: str) -> None:
    # build_augment passes the recipe's parameters by keyword, nothing else.
    entry = BUILTINS.augmentations.get(name)
    assert entry.target == f"mnistkit.data.augment:{name}"
    sig = inspect.signature(entry.load())
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values()), sig
    assert set(sig.parameters) == {p.target_name or n for n, p in entry.params.items()}
    check_params_against(entry, sig)
    for pname in entry.meta.get("ranges", ()):
        assert entry.params[pname].type == "float_pair", f"{name}.{pname}: a range is a float_pair"


def test_layer_and_activation_names_do_not_collide() -> None:
    # Every activation is also a layer type; a layer with the same name would be unreachable.
    assert not set(BUILTINS.layers.names()) & set(BUILTINS.activations.names())


@pytest.mark.parametrize("name", BUILTINS.datasets.names())
def test_dataset_targets_take_a_context(name: str) -> None:
    entry = BUILTINS.datasets.get(name)
    assert list(inspect.signature(entry.load()).parameters) == ["ctx"]
    assert {"shape", "num_classes", "kind", "download"} <= set(entry.meta)
    assert entry.meta["kind"] in ("image", "audio")


# ------------------------------------------------------------ declarations are self-consistent
_SAMPLE = {
    "int": 1,
    "float": 0.5,
    "bool": True,
    "str": "x",
    "float_pair": (0.5, 0.5),
    "int_pair": (1, 1),
    "int_list": [1],
    "int_or_pair": 1,
}


def _spec_with_defaults(entry: Entry, key: str) -> dict[str, Any]:
    spec: dict[str, Any] = {key: entry.name}
    for pname, p in entry.params.items():
        if p.required:
            spec[pname] = p.choices[0] if p.choices else _SAMPLE[p.type]
        else:
            spec[pname] = list(p.default) if isinstance(p.default, tuple) else p.default
    return spec


_SLOTS = {
    "activations": lambda s: {"model": {"hidden": [4], "activation": s}},
    "losses": lambda s: {"model": {"hidden": [4]}, "loss": s},
    "optimizers": lambda s: {"model": {"hidden": [4]}, "optimizer": s},
    "schedulers": lambda s: {"model": {"hidden": [4]}, "scheduler": s},
    "layers": lambda s: {"model": {"layers": [s]}},
    "augmentations": lambda s: {"model": {"hidden": [4]}, "data": {"dataset": "digits", "augment": [s]}},
}


@pytest.mark.parametrize(
    "kind,name", entries("activations", "losses", "optimizers", "schedulers", "layers", "augmentations")
)
def test_declared_defaults_pass_their_own_schema(kind: str, name: str) -> None:
    # A default outside its own declared range (say gt=0 with default 0) would make the
    # resolved recipe.yaml of every run invalid; spelling every default out must validate.
    entry = BUILTINS.by_kind()[kind].get(name)
    spec = _spec_with_defaults(entry, "type" if kind in ("layers", "augmentations") else "name")
    data = {"data": {"dataset": "digits"}, **_SLOTS[kind](spec)}
    recipe_model(BUILTINS).model_validate(data)


def test_param_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown param type 'double'"):
        Param("double", 1.0)


# ------------------------------------------------------------------------ names and lookups
def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownName) as info:
        registries().optimizers.get("adamm")
    text = str(info.value)
    assert text.startswith("unknown optimizer 'adamm'; did you mean 'adam' or 'adamw'?")
    assert "(known: sgd, adam, adamw, rmsprop, adagrad" in text


def test_unknown_name_without_close_match_lists_the_known() -> None:
    text = str(UnknownName("loss", "zzz", ["cross_entropy", "nll"]))
    assert text == "unknown loss 'zzz' (known: cross_entropy, nll)"
    assert did_you_mean("zzz", ["cross_entropy", "nll"]) is None


def test_register_checks_names_and_duplicates() -> None:
    reg = Registries()
    with pytest.raises(ValueError, match="lowercase"):
        reg.activations.register("Square", "m:S", "x")
    reg.activations.register("square", "m:S", "x")
    with pytest.raises(ValueError, match="already registered"):
        reg.activations.register("square", "m:T", "x")
    reg.activations.register("square", "m:T", "x", replace=True)
    assert reg.activations.get("square").target == "m:T"


def test_registering_imports_nothing() -> None:
    reg = Registries()
    reg.activations.register("ghost", "no_such_module_anywhere:Ghost", "never imported")
    assert "ghost" in reg.activations  # only using it imports the target
    with pytest.raises(ModuleNotFoundError):
        reg.activations.get("ghost").load()


# ------------------------------------------------------------------ no torch for metadata work
_NO_TORCH = """
import sys
sys.argv = ["mnistkit", *sys.argv[1:]]
from mnistkit.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print("exit", code or 0, "torch-imported", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list"],
        ["list", "optimizers"],
        ["validate", "recipes/mlp5.yaml"],
        ["validate", "recipes/sweeps/quickstart.yaml"],
        ["sweep", "--help"],
        ["serve", "--help"],
        ["schema"],
        ["fields"],
    ],
    ids=" ".join,
)
def test_metadata_commands_do_not_import_torch(args: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "COLUMNS": "200"},
    )
    assert res.stderr.splitlines()[-1] == "exit 0 torch-imported False", res.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_list_shows_every_registered_name(cli) -> None:
    res = cli("list", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    for kind, registry in registries().by_kind().items():
        assert f"{kind} — {registry.description}" in res.stdout
        cells = {line.split("│")[1].strip() for line in res.stdout.splitlines() if line.count("│") > 2}
        for name in registry.names():
            assert name in cells, f"{kind}: {name} not listed"


# -------------------------------------------------------------------------------- plugins
PLUGIN = '''
"""A user's plugin: a new activation (with a declared parameter) and a tiny optimizer."""
import torch
from torch import nn

from mnistkit.registry.core import Param


class Square(nn.Module):
    def forward(self, x):
        return x * x


class ScaledSquare(nn.Module):
    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x * x


def register(reg):
    reg.activations.register("square", "{module}:Square", "x*x")
    reg.activations.register(
        "scaled_square",
        "{module}:ScaledSquare",
        "scale * x*x",
        {{"scale": Param("float", 1.0, "factor", gt=0, target_name="factor")}},
    )
'''


def write_plugin(folder: Path, module: str) -> Path:
    path = folder / f"{module}.py"
    path.write_text(textwrap.dedent(PLUGIN).format(module=module), encoding="utf-8")
    return path


def plugin_recipe(folder: Path, module: str, activation: str = "square", **extra: str) -> Path:
    path = folder / "recipe.yaml"
    lines = [
        f"plugins: [{module}]",
        "data: {dataset: digits, limit: 256, batch_size: 32}",
        f"model: {{hidden: [16], activation: {activation}}}",
        "optimizer: {name: sgd, lr: 0.05}",
        "epochs: 1",
        "train: {device: cpu, threads: 1, plots: false, checkpoint: false}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _module_name(tmp_path: Path) -> str:
    # Unique per test: an in-process import stays in sys.modules.
    return "plug_" + "".join(c for c in tmp_path.name if c.isalnum())


def test_plugin_activation_trains_through_the_cli(cli, tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    write_plugin(tmp_path, module)
    recipe = plugin_recipe(tmp_path, module)
    out = tmp_path / "run"
    res = cli("run", recipe, "--out", out, "--progress", "plain", cwd=tmp_path.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "metrics.csv").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch
    summary = [line.split() for line in res.stdout.splitlines()]
    assert ["2", "│", "square", "│", "16", "│", "0"] in summary  # the model uses the plugin


LAZY_PLUGIN = """
def register(reg):
    # Only names here: the torch code lives in a sibling module, imported when first used.
    reg.activations.register("cube", "{module}_layers:Cube", "x ** 3")
"""

LAZY_LAYERS = """
from torch import nn


class Cube(nn.Module):
    def forward(self, x):
        return x**3
"""


def test_lazy_plugin_targets_in_a_sibling_module(tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(LAZY_PLUGIN).format(module=module))
    (tmp_path / f"{module}_layers.py").write_text(textwrap.dedent(LAZY_LAYERS))
    recipe_path = plugin_recipe(tmp_path, module, "cube")

    # Validating needs only the names: no torch, no sibling import.
    res = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "validate", str(recipe_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert res.stderr.splitlines()[-1] == "exit 0 torch-imported False", res.stderr

    # Training imports the sibling module from the recipe's folder when the model is built.
    import mnistkit.session as runner

    result = runner.run(load_recipe(recipe_path), runner.RunOptions(out=tmp_path / "run", progress="none"))
    assert result.status == "finished" and len(result.rows) == 1


def test_plugin_params_are_validated_like_builtins(tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    write_plugin(tmp_path, module)
    ok = load_recipe(plugin_recipe(tmp_path, module, "{name: scaled_square, scale: 2.5}"))
    assert (ok.model.activation.name, ok.model.activation.scale) == ("scaled_square", 2.5)
    assert module in registries().plugins_loaded

    bad = plugin_recipe(tmp_path, module, "{name: scaled_square, scale: 0}")
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    [problem] = info.value.problems
    assert problem.field == "model.activation.scale"
    line3 = bad.read_text().splitlines()[2]
    assert problem.where == f"{bad}:3:{line3.index('scale: 0') + len('scale: ') + 1}"


def test_plugin_target_name_renames_the_keyword(tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    write_plugin(tmp_path, module)
    load_recipe(plugin_recipe(tmp_path, module))  # loads the plugin
    act = registries().activations.create("scaled_square", scale=3.0)
    assert act.factor == 3.0


def test_plugins_are_not_visible_without_being_named(tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    write_plugin(tmp_path, module)
    recipe = plugin_recipe(tmp_path, module)
    text = recipe.read_text().replace(f"plugins: [{module}]\n", "")
    with pytest.raises(RecipeError, match="unknown activation name 'square'"):
        load_recipe_text(text)


def test_entry_point_plugins_load_at_startup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    module = _module_name(tmp_path)
    write_plugin(tmp_path, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="squares", value=f"{module}:register", group=ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def fake(**kwargs: Any) -> Any:
        return [ep] if kwargs.get("group") == ENTRY_POINT_GROUP else real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    reset_registries()
    assert "square" in registries().activations
    assert module in registries().plugins_loaded


def test_plugin_import_failure_names_the_plugin(cli, tmp_path: Path) -> None:
    recipe = plugin_recipe(tmp_path, "no_such_plugin_module")
    for command in ("validate", "run"):
        res = cli(command, recipe, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert f"{recipe}:1:11: plugins[0]: cannot import plugin module 'no_such_plugin_module'" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "body,message",
    [
        ("x = 1\n", "has no register(reg) function"),
        (
            "def register(reg):\n    raise RuntimeError('boom')\n",
            "failed while registering: RuntimeError: boom",
        ),
        (
            "def register(reg):\n    reg.activations.register('relu', 'torch.nn:ReLU', 'again')\n",
            "activation 'relu' is already registered",
        ),
    ],
    ids=["no-register", "raises", "duplicate-name"],
)
def test_broken_plugins_are_recipe_errors(tmp_path: Path, body: str, message: str) -> None:
    module = _module_name(tmp_path)
    (tmp_path / f"{module}.py").write_text(body, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(plugin_recipe(tmp_path, module))
    [problem] = info.value.problems
    assert problem.field == "plugins[0]" and message in problem.message, problem


NAMES_ONLY_PLUGIN = """
from mnistkit.registry.core import Param


def register(reg):
    reg.activations.register(
        "scaled_cube", "nowhere_yet:ScaledCube", "scale * x ** 3",
        {"scale": Param("float", 1.0, "factor", gt=0)},
    )
"""


def test_list_loads_a_plugin_and_names_a_missing_one(cli, tmp_path: Path) -> None:
    module = _module_name(tmp_path)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(NAMES_ONLY_PLUGIN))
    res = cli("list", "activations", "--plugin", module, cwd=tmp_path, env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    # Listed with its declared parameters; its target is never imported just to list it.
    assert re.search(r"│ scaled_cube +│ scale \* x \*\* 3 +│ scale: float, > 0, default 1.0 +│", res.stdout)

    res = cli("list", "--plugin", "no_such_plugin_module", cwd=tmp_path)
    assert res.returncode == 2
    assert "--plugin no_such_plugin_module: cannot import plugin module" in res.stderr


def test_a_run_with_a_recipe_folder_plugin_is_self_contained(cli, tmp_path: Path) -> None:
    """A run whose plugin sat next to its recipe could not be resumed, evaluated or predicted
    from elsewhere: the run directory now keeps the plugin's source."""
    module = _module_name(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{module}.py").write_text(textwrap.dedent(LAZY_PLUGIN).format(module=module))
    (project / f"{module}_layers.py").write_text(textwrap.dedent(LAZY_LAYERS))
    recipe = plugin_recipe(project, module, "cube", epochs="2")
    recipe.write_text(
        recipe.read_text().replace("checkpoint: false", "checkpoint: true").replace("epochs: 1\n", "")
    )
    run = tmp_path / "run"
    res = cli("run", recipe, "--out", run, "--progress", "none", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    (project / f"{module}.py").unlink()  # the project moves on; the run must not need it
    (project / f"{module}_layers.py").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ev = cli("eval", run, cwd=elsewhere)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    resumed = cli("run", "--resume", run, "--set", "epochs=3", "--progress", "none", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len((run / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs


def test_list_datasets_shows_what_docs_recipe_md_says_of_each() -> None:
    """`mnistkit list datasets` had an empty parameters column; it shows the input, classes and
    download facts of docs/recipe.md's datasets table (read here from the file)."""
    from typer.testing import CliRunner

    from mnistkit.cli.app import app

    doc = (REPO / "docs" / "recipe.md").read_text(encoding="utf-8")
    rows = [
        line.split("|")[1:-1] for line in doc.splitlines() if re.match(r"\| `\w+` \|.*\| (yes|no) \|$", line)
    ]
    documented = {cells[0].strip(" `"): [c.strip() for c in cells[2:]] for cells in rows}
    assert set(documented) == set(registries().datasets.names())
    # image_folder's input is set by data.image (the docs said "from data.features").
    assert documented["image_folder"][0] == "from data.image"
    res = CliRunner().invoke(app, ["list", "datasets"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    listed = {
        cells[0]: cells[2:]
        for line in res.output.splitlines()
        if line.count("│") > 2 and (cells := [c.strip() for c in line.strip("│").split("│")])[0]
    }
    assert listed == documented, res.output


def test_image_folder_says_it_reads_every_format_it_reads() -> None:
    from mnistkit.data.images import IMAGE_EXTENSIONS

    names = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
    description = registries().datasets.get("image_folder").description
    for ext in IMAGE_EXTENSIONS:
        assert names.get(ext, ext[1:].upper()) in description.upper(), ext
