"""What `mnistkit validate` does at start-up (issue 18: start-up as a ratio to its floor).

The times themselves are measured by ``bench/train_speed.py --cli-only`` (docs/performance.md);
these tests check, without timing anything, the mechanisms that keep them low: the command line
does not import the modules of commands it does not run, a recipe is validated by a model of only
the registry entries it names (not the ~50 of the full schema), and the field docstrings are not
read by pydantic's frame walk (``inspect.getmodule`` once per frame on Python < 3.13). And the
smaller model gives the same recipe as the full one, for every recipe in recipes/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnistkit.recipe.schema import check_recipe, load_document, load_recipe, recipe_model
from mnistkit.registry import registries

REPO = Path(__file__).resolve().parents[1]

# Run the console script's main() in a fresh interpreter, then report what the process holds.
_PROBE = """
import inspect, json, sys
calls = []
_getmodule = inspect.getmodule
inspect.getmodule = lambda *a, **k: calls.append(1) or _getmodule(*a, **k)
sys.argv = ["mnistkit", "validate", "recipes/mlp5.yaml"]
from mnistkit.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
import pydantic
from mnistkit.registry import registries
def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)
kinds = {"activations": "activation", "losses": "loss", "optimizers": "optimizer",
         "schedulers": "scheduler", "layers": "layer", "augmentations": "augmentation"}
reg = registries()
entry_models = {f"{kind}_{e.name}" for attr, kind in kinds.items() for e in getattr(reg, attr)}
entry_models |= {f"layer_{e.name}" for e in reg.activations}  # activations may be layers too
built = sorted(c.__name__ for c in subclasses(pydantic.BaseModel) if c.__name__ in entry_models)
print(json.dumps({"code": code, "modules": sorted(sys.modules), "entry_models": built,
                  "possible": len(entry_models), "getmodule_calls": len(calls)}))
"""


@pytest.fixture(scope="module")
def validate_process() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validate_builds_only_the_registry_entry_models_the_recipe_names(validate_process: dict) -> None:
    assert validate_process["code"] == 0
    spec = yaml.safe_load((REPO / "recipes" / "mlp5.yaml").read_text())
    named = {
        f"activation_{spec['model']['activation']}",
        f"loss_{spec['loss']}",
        f"optimizer_{spec['optimizer']['name']}",
    }
    assert set(validate_process["entry_models"]) == named
    assert validate_process["possible"] > 40  # what building the full schema would have cost


def test_validate_does_not_import_the_other_commands(validate_process: dict) -> None:
    others = {
        "mnistkit.cli.run_commands",  # eval, predict, runs, compare
        "mnistkit.cli.export_command",
        "mnistkit.cli.serve_command",
        "mnistkit.cli.check_command",
        "mnistkit.cli.track_command",
        "mnistkit.cli.report_command",
        "mnistkit.cli.data_command",
        "mnistkit.sweeps.cli",
        "mnistkit.runs.listing",
        "mnistkit.runs.directory",
        "torch",
    }
    assert others.isdisjoint(validate_process["modules"]), others & set(validate_process["modules"])


def test_field_docstrings_are_read_without_walking_frames(validate_process: dict) -> None:
    assert validate_process["getmodule_calls"] == 0


def test_help_still_lists_the_commands_of_every_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "mnistkit", "--help"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    listed = {line.strip("│ ").split(" ")[0] for line in out.stdout.splitlines() if line.startswith("│ ")}
    # app.py's own commands and those of the modules main() imports only when needed.
    for name in ("run", "validate", "eval", "predict", "runs", "compare", "export", "serve", "sweep"):
        assert name in listed, out.stdout


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_validate_to_what_the_full_model_gives(path: Path) -> None:
    reg = registries()
    recipe = load_recipe(path)
    doc = load_document(path)
    full = recipe_model(reg).model_validate({**doc.data, "name": recipe.name})
    expected, problems = check_recipe(full, reg)
    assert problems == []
    assert recipe.model_dump() == expected.model_dump()
    # ... and it came from the smaller model: fewer optimizer classes than the full union has.
    assert type(recipe) is not recipe_model(reg)
