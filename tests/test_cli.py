"""The command line: list / schema / fields / --help / --debug / usage errors, and the generated
recipe reference (docs/recipe.md) being current."""

from __future__ import annotations

import contextlib
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnistkit.recipe.reference import fields_text, recipe_reference_md
from mnistkit.recipe.schema import load_recipe, resolved_dict
from mnistkit.registry import registries

REPO = Path(__file__).resolve().parents[1]
KINDS = ("activations", "losses", "optimizers", "schedulers", "datasets", "layers", "augmentations")
WIDE = {"COLUMNS": "200"}


def table_titles(stdout: str) -> list[str]:
    return [line.split(" — ")[0].strip() for line in stdout.splitlines() if " — " in line]


# ----------------------------------------------------------------------------------- list
def test_list_shows_every_registry(cli) -> None:
    res = cli("list", env=WIDE)
    assert res.returncode == 0, res.stderr
    assert table_titles(res.stdout) == list(KINDS)


def test_list_one_kind(cli) -> None:
    res = cli("list", "optimizers", env=WIDE)
    assert res.returncode == 0, res.stderr
    assert table_titles(res.stdout) == ["optimizers"]
    for name in ("sgd", "adam", "adamw", "rmsprop", "adagrad"):
        assert re.search(rf"│ {name} +│", res.stdout), name
    # Values as a recipe spells them (false, [0.9, 0.999]), not as Python prints them.
    assert "momentum: float, ≥ 0, < 1, default 0.0" in res.stdout
    assert "nesterov: bool, default false" in res.stdout
    assert "betas: pair of floats, ≥ 0, < 1, default [0.9, 0.999]" in res.stdout


def test_list_kind_typo_suggests(cli) -> None:
    res = cli("list", "optimizer")
    assert res.returncode == 2
    assert "error usage: unknown kind 'optimizer'" in res.stderr
    assert "did you mean 'optimizers'?" in res.stderr
    assert res.stdout == ""


def test_list_bogus_kind(cli) -> None:
    res = cli("list", "bogus")
    assert res.returncode == 2
    assert "unknown kind 'bogus'" in res.stderr
    assert "choose from " + ", ".join(KINDS) in res.stderr
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------------- schema
def test_schema_is_json_schema_of_the_recipe(cli) -> None:
    res = cli("schema")
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    props = schema["properties"]
    assert {"data", "model", "optimizer", "loss", "scheduler", "epochs", "train"} <= set(props)
    assert set(schema["required"]) == {"data", "model"}
    assert props["epochs"]["default"] == 10 and props["epochs"]["minimum"] == 1
    # Registry entries and their declared parameters are in the schema too (editor completion).
    defs = schema["$defs"]
    sgd = next(d for d in defs.values() if d.get("properties", {}).get("name", {}).get("const") == "sgd")
    assert sgd["properties"]["lr"]["exclusiveMinimum"] == 0
    assert sgd["additionalProperties"] is False


# --------------------------------------------------------------------------------- fields
def test_fields_command(cli) -> None:
    res = cli("fields")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "data.batch_size: int ≥ 1 = 64" in lines
    assert (
        "data.dataset: one of mnist, fashion_mnist, kmnist, digits, fsdd, audio_folder, "
        "image_folder (required)" in lines
    )
    assert "    optimizer.lr: float > 0 = 0.001" in lines  # per-optimizer parameters
    assert "    Training examples per optimizer step." in lines  # the field's docstring


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:  # an empty mapping (expect: {}) is a value
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_fields_names_every_key_of_a_resolved_recipe() -> None:
    # The resolved recipe spells out every key with its value: each must be documented.
    resolved = _flatten(resolved_dict(load_recipe(REPO / "recipes" / "quickstart.yaml")))
    documented = {line.strip().split(": ")[0] for line in fields_text().splitlines()}
    for path in resolved:
        if path.endswith((".name", ".type")) and path.rsplit(".", 1)[0] in documented:
            continue  # the registry tag: documented as "name: sgd - ..." under its key
        if path.startswith("expect."):  # metric names, the user's keys: documented under expect
            path = "expect"
        assert path in documented, f"{path} is missing from `mnistkit fields`"


_FIELD = re.compile(r"^ *(?P<path>[a-z_.]+): (?P<type>.+?) (?:= (?P<default>.+)|\(required\))$")
_VARIANT = re.compile(r"^  (?P<tag>name|type): (?P<name>[a-z_0-9]+) - ")
# A recipe that sets only what is required: every other key takes the recipe model's own default.
MINIMAL = "data: {dataset: digits}\nmodel: {hidden: [8]}\ntrain: {early_stopping: {}}\n"


def documented_defaults() -> tuple[dict[str, str], dict[tuple[str, str], dict[str, str]]]:
    """`mnistkit fields` as {key: default} for plain keys and {(key, variant): {param: default}}
    for registry parameters; keys documented as required get the value "required"."""
    plain: dict[str, str] = {}
    params: dict[tuple[str, str], dict[str, str]] = {}
    variant: tuple[str, str] | None = None
    for line in fields_text().splitlines():
        if m := _VARIANT.match(line):
            variant = (next(reversed(plain)), m["name"])  # the registry key documented just above
            params[variant] = {}
        elif (m := _FIELD.match(line)) and line.startswith("    ") and variant:
            params[variant][m["path"].rsplit(".", 1)[1]] = m["default"] or "required"
        elif m := _FIELD.match(line):
            variant = None
            plain[m["path"]] = m["default"] or "required"
    return plain, params


def _documented_value(text: str) -> Any:
    value = yaml.safe_load(text)
    with contextlib.suppress(ValueError, TypeError):
        if isinstance(value, str):  # "1e-08": YAML 1.1 reads exponents without a dot as text
            return float(value)
    return value


def test_documented_defaults_are_the_real_defaults() -> None:
    # Compare what `mnistkit fields` documents with what a recipe that leaves the key out gets.
    from mnistkit.recipe.schema import load_recipe_text
    from mnistkit.recipe.sections import ImageSpec, LogMel

    plain, params = documented_defaults()
    # model_dump, not resolved_dict: the latter leaves out keys that do not apply to digits.
    real = _flatten(load_recipe_text(MINIMAL, "minimal.yaml").model_dump(mode="json"))
    real.update(_flatten(LogMel().model_dump(mode="json"), "data.features."))  # audio-only section
    real.update(_flatten(ImageSpec().model_dump(mode="json"), "data.image."))  # image_folder only
    checked = 0
    for path, default in plain.items():
        if default == "required" or path in ("name", "model.hidden"):
            continue  # set by MINIMAL, or (name) filled in from the file name
        if path.startswith("data.normalize."):
            continue  # only inside normalize: {mean, std}, both required
        got = real[path] if path in real else real[f"{path}.name"]
        assert got == _documented_value(default), f"{path}: `mnistkit fields` says {default}, real {got!r}"
        checked += 1
    assert checked >= 40
    # Registry parameters: each variant given by its name alone (variants with a required
    # parameter get a placeholder for it) and resolved.
    for (key, name), documented in params.items():
        if key == "model.layers":
            continue  # layers have required sizes that depend on the layer; see test_layers
        if key == "data.augment":
            continue  # a list of {type: ...}: each default is checked by test_registry's schema test
        given = {p: 0.5 for p, d in documented.items() if d == "required"}
        spec = yaml.safe_dump({"name": name, **given}, default_flow_style=True).strip()
        resolved = _flatten(
            load_recipe_text(MINIMAL, "minimal.yaml", [f"{key}={spec}"]).model_dump(mode="json")
        )
        for param, default in documented.items():
            if default == "required":
                continue
            got = resolved[f"{key}.{param}"]
            want = _documented_value(default)
            assert got == want, f"{key}: {name}: {param}: `mnistkit fields` says {default}, real {got!r}"
            checked += 1
    assert checked >= 80


# ------------------------------------------------------------------------ docs/recipe.md
def test_docs_recipe_md_is_generated_and_current() -> None:
    path = REPO / "docs" / "recipe.md"
    assert path.read_text(encoding="utf-8") == recipe_reference_md(), (
        "docs/recipe.md is out of date: run `python -m mnistkit.recipe.reference > docs/recipe.md`"
    )


def test_recipe_reference_covers_keys_and_registries() -> None:
    text = recipe_reference_md()
    for key in ("`data.batch_size`", "`train.early_stopping.patience`", "`model.hidden`", "`epochs`"):
        assert f"| {key} |" in text, key
    reg = registries()
    for kind, registry in reg.by_kind().items():
        assert f"### {kind.capitalize()}" in text
        for name in registry.names():
            assert f"| `{name}` |" in text, f"{kind}: {name}"
    assert "`lr`: float, > 0, default 0.001 — learning rate" in text


# ------------------------------------------------------------------- help, usage, --debug
def test_help_lists_commands_and_debug_flag(cli) -> None:
    res = cli("--help", env=WIDE)
    assert res.returncode == 0
    for command in ("run", "validate", "list", "schema", "fields"):
        assert re.search(rf"│ {command} ", res.stdout), command
    assert "--debug" in res.stdout


@pytest.mark.parametrize("command", ["run", "eval", "predict", "runs", "compare", "export", "serve"])
def test_help_shows_words_not_python_types(command: str) -> None:
    """Every argument and option reads as a word (DIR, K, RUN_A), never `<path>` or `<int range>`."""
    from typer.testing import CliRunner

    from mnistkit.cli.app import app

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert not re.search(r"<(path|int|bool|float|text|list)[^>]*>", res.output), res.output
    # Arguments are named in capitals, as in the docs (RUN_DIR, FILE|FOLDER...), not as parameters.
    usage = next(line for line in res.output.splitlines() if "Usage:" in line)
    assert not re.search(r"[\[{][a-z_]+[\]}]", usage), usage


@pytest.mark.parametrize(
    "args,message",
    [
        (["run"], "missing recipe: mnistkit run RECIPE.yaml"),
        (["run", "recipes/quickstart.yaml", "--progress", "fancy"], "--progress 'fancy'"),
        (["run", "recipes/quickstart.yaml", "--resume", "runs/x"], "give either a recipe or --resume"),
        (["trian"], "No such command 'trian'"),
    ],
    ids=["no-recipe", "bad-progress", "recipe-and-resume", "unknown-command"],
)
def test_usage_errors_exit_2(cli, args: list[str], message: str) -> None:
    res = cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr


BROKEN_PLUGIN = """
def register(reg):
    reg.datasets.register(
        "broken_data", "{module}:load", "a loader with a bug",
        shape=(1, 8, 8), num_classes=10, kind="image", download=False,
    )


def load(ctx):
    raise RuntimeError("kaput")
"""


def test_debug_shows_the_traceback_of_an_internal_error(cli, tmp_path: Path) -> None:
    module = "broken_" + "".join(c for c in tmp_path.name if c.isalnum())
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(BROKEN_PLUGIN).format(module=module))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"plugins: [{module}]\ndata: {{dataset: broken_data}}\nmodel: {{hidden: [8]}}\n"
        "train: {device: cpu, plots: false}\n"
    )
    res = cli("run", recipe, "--out", tmp_path / "a", "--progress", "plain")
    assert res.returncode == 1
    assert "internal error: RuntimeError: kaput" in res.stderr
    assert "run again with --debug" in res.stderr
    assert "Traceback" not in res.stderr

    res = cli("--debug", "run", recipe, "--out", tmp_path / "b", "--progress", "plain")
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert f'{module}.py", line' in res.stderr and "RuntimeError: kaput" in res.stderr


def test_run_commands_that_cannot_be_imported_fail_loudly(cli) -> None:
    """An ImportError in the run commands' module made eval/predict/runs/compare vanish silently."""
    res = cli("--help", prelude="import sys; sys.modules['mnistkit.cli.run_commands'] = None")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "could not be loaded" in res.stderr and "eval, predict, runs" in res.stderr
    assert "Traceback" not in res.stderr
    ok = cli("--help")
    assert ok.returncode == 0 and "predict" in ok.stdout


@pytest.mark.parametrize("flag", ["--out", "--runs"])
def test_out_or_runs_with_resume_is_refused(cli, tmp_path: Path, flag: str) -> None:
    """--out/--runs were accepted with --resume and silently ignored (the run continues in place)."""
    res = cli("run", "--resume", tmp_path / "some-run", flag, tmp_path / "elsewhere")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{flag} cannot be used with --resume" in res.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_version(cli) -> None:
    from mnistkit import __version__

    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"mnistkit {__version__}"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--epochs", "3"], "--set epochs=3"),
        (["--batch-size=32"], "--set data.batch_size=32"),
        (["--lr", "0.1"], "--set optimizer.lr=0.1"),
        (["--debug"], "mnistkit --debug run ..."),
    ],
)
def test_parser_errors_share_the_error_style_and_point_at_the_fix(cli, args: list[str], hint: str) -> None:
    """The parser's boxed errors became one `error: ...` line plus the fix, exit 2."""
    res = cli("run", "recipes/quickstart.yaml", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: No such option")
    assert hint in res.stderr
    assert "╭" not in res.stderr and "Traceback" not in res.stderr


def test_show_prints_the_resolved_recipe_which_runs_as_is(cli, tmp_path: Path) -> None:
    res = cli("show", "recipes/mlp5.yaml", "--set", "optimizer.lr=0.05", "--set", "epochs=2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# recipes/mlp5.yaml, resolved --set optimizer.lr=0.05 --set epochs=2\n")
    shown = yaml.safe_load(res.stdout)
    assert shown["optimizer"] == {**shown["optimizer"], "name": "sgd", "lr": 0.05, "momentum": 0.5}
    assert shown["epochs"] == 2 and shown["data"]["batch_size"] == 64  # defaults spelled out
    again = tmp_path / "shown.yaml"
    again.write_text(res.stdout)
    assert resolved_dict(load_recipe(again)) == {**shown, "name": "mlp5"}
    bad = cli("show", "recipes/mlp5.yaml", "--set", "optimizer.lr=-1")
    assert bad.returncode == 2 and "optimizer.lr" in bad.stderr


def test_cache_lists_and_clears_features_but_keeps_downloads_unless_asked(cli, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "features").mkdir(parents=True)
    (cache / "features" / "fsdd-abc.npz").write_bytes(b"x" * 2048)
    (cache / "data" / "FashionMNIST" / "raw").mkdir(parents=True)
    (cache / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"y" * 10)
    env = {"MNISTKIT_CACHE": str(cache)}
    listed = cli("cache", env=env)
    assert listed.returncode == 0 and str(cache) in listed.stdout
    assert re.search(r"features\s+1 files\s+2\.0 KB", listed.stdout), listed.stdout
    cleared = cli("cache", "clear", env=env)
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not (cache / "features").exists() and (cache / "data").exists()
    cli("cache", "clear", "--downloads", env=env)
    assert not (cache / "data").exists()


def test_set_expands_a_bare_name_to_set_a_key_inside_it(cli, tmp_path: Path) -> None:
    """Every key `mnistkit fields` lists can be set: `loss: cross_entropy` written as a bare name
    (or left to its default) took no `--set loss.label_smoothing=...` before."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: digits}\nmodel: {hidden: [8]}\nloss: cross_entropy\n")
    res = cli("show", recipe, "--set", "loss.label_smoothing=0.1", "--set", "optimizer.lr=0.01")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["loss"] == {"name": "cross_entropy", "label_smoothing": 0.1, "class_weights": None}
    assert shown["optimizer"]["name"] == "adam" and shown["optimizer"]["lr"] == 0.01  # the default optimizer
    nothing = cli("validate", recipe, "--set", "scheduler.max_lr=0.1")  # no default scheduler to expand
    assert nothing.returncode == 2
    assert "--set scheduler.max_lr=0.1: scheduler: missing key 'name'" in nothing.stderr


@pytest.mark.parametrize(
    ("arg", "message", "hint"),
    [
        ("epochs=", "--set epochs=: epochs: no value given", "write null to unset a key"),
        ("model.hidden=[64, 32", "is not valid YAML: expected ',' or ']'", "the '[' is not closed"),
    ],
)
def test_set_value_problems_are_one_readable_line(cli, arg: str, message: str, hint: str) -> None:
    res = cli("validate", "recipes/quickstart.yaml", "--set", arg)
    assert res.returncode == 2
    first, second = res.stderr.splitlines()[:2]
    assert message in first and hint in second
    assert "<unicode string>" not in res.stderr and "^" not in res.stderr


def test_set_into_a_missing_list_item_names_the_set_and_the_list_length(cli) -> None:
    res = cli("validate", "recipes/cnn.yaml", "--set", "model.layers.20.p=0.1")
    assert res.returncode == 2
    assert res.stderr.startswith("error --set model.layers.20.p=0.1: model.layers.20: no item 20")
    assert "recipes/cnn.yaml:" not in res.stderr  # the --set is the cause, not the file


def test_validate_states_the_model_size_it_infers(cli) -> None:
    """The count is static (no torch): the tutorial MLP is 784*512+512 + ... + 64*10+10 = 575,050."""
    res = cli("validate", "recipes/mlp5.yaml", "--set", "model.hidden=[2000000000]")
    assert res.returncode == 0, res.stderr
    assert "(1,590,000,000,010 parameters, 6,360.0 GB of float32 weights)" in res.stdout
    tutorial = cli("validate", "recipes/mlp5.yaml")
    assert "ok recipes/mlp5.yaml (575,050 parameters, 2.3 MB of float32 weights)" in tutorial.stdout


def test_run_refuses_a_model_whose_weights_cannot_fit_before_loading_data(cli, tmp_path: Path) -> None:
    """hidden: [2000000000] validated and then died as 'internal error ... please report it'."""
    out = tmp_path / "big"
    res = cli("run", "recipes/mlp5.yaml", "--set", "model.hidden=[2000000000]", "--out", out, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1,590,000,000,010 parameters: 6,360.0 GB of float32 weights alone, more than the" in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()  # refused before the run directory and before the (MNIST) data


def test_plots_that_cannot_be_made_are_said_not_skipped(cli, tmp_path: Path) -> None:
    """An ImportError on the way to the plots skipped them without a word."""
    out = tmp_path / "r"
    res = cli(
        "run",
        "recipes/quickstart.yaml",
        "--set",
        "epochs=1",
        "--set",
        "expect=null",  # a cut-down run: the recipe's expect: is not about it
        "--out",
        out,
        "--progress",
        "plain",
        prelude="import sys; sys.modules['mnistkit.evaluation.evaluate'] = None",
    )
    assert res.returncode == 0, res.stderr
    assert "could not write plots: ModuleNotFoundError" in res.stdout + res.stderr
    assert (out / "metrics.csv").is_file() and (out / "last.pt").is_file()  # the run itself is kept


@pytest.mark.parametrize("command", [["fields"], ["runs", "{tmp}"]])
def test_a_reader_that_went_away_ends_the_command_quietly(command: list[str], tmp_path: Path) -> None:
    """`mnistkit runs | head -1`: once the reader has closed the pipe, the command stops quietly
    (click's exit code 1 for a broken pipe), without an 'internal error' or a traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails
    try:
        args = [a.replace("{tmp}", str(tmp_path)) for a in command]
        proc = subprocess.run(
            [sys.executable, "-m", "mnistkit", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "", proc.stderr
