"""Static shape checking at validate time (no torch) and the real dry run of `validate --build`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe_text

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

CONV_BLOCK = """\
    - {type: conv2d, out_channels: 32, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - relu
    - {type: maxpool2d, kernel_size: 2}
    - {type: conv2d, out_channels: 64, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
"""

# The reference tutorial's model with its reshape left out: the LSTM gets the conv feature map.
TUTORIAL_MISTAKE = f"""\
data:
  dataset: fsdd
  features: {{n_fft: 512, hop_length: 128, n_mels: 64, frames: 64}}
model:
  layers:
{CONV_BLOCK}    - {{type: lstm, hidden_size: 128, bidirectional: true}}   # HERE
    - {{type: attention_pool}}
"""

WRONG_IN_FEATURES = """\
data: {dataset: fashion_mnist}
model:
  layers:
    - {type: conv2d, out_channels: 16, kernel_size: 5}
    - {type: maxpool2d, kernel_size: 2}
    - {type: conv2d, out_channels: 32, kernel_size: 5}
    - {type: flatten}
    - {type: linear, in_features: 3136, out_features: 10}   # HERE
"""


def _line(text: str, marker: str = "# HERE") -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def _col(text: str, value: str) -> int:
    """1-based column of ``value`` on the marked line."""
    return text.splitlines()[_line(text) - 1].index(value) + 1


def _problems(text: str, source: str = "r.yaml") -> list:
    with pytest.raises(RecipeError) as exc:
        load_recipe_text(text, source)
    return exc.value.problems


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------- static (in process)
def test_lstm_after_conv_without_to_sequence() -> None:
    (p,) = _problems(TUTORIAL_MISTAKE)
    assert p.where == f"r.yaml:{_line(TUTORIAL_MISTAKE)}:7"
    assert p.field == "model.layers[8]"
    assert p.message == (
        "layer 8 (lstm): expects a (time, features) sequence, gets (64, 16, 16); "
        "add {type: to_sequence} before it"
    )
    assert "x.view(B, -1, T)" in p.hint


def test_the_fixed_tutorial_model_validates() -> None:
    fixed = TUTORIAL_MISTAKE.replace("    - {type: lstm", "    - {type: to_sequence}\n    - {type: lstm")
    recipe = load_recipe_text(fixed)
    assert recipe.model.layers is not None and len(recipe.model.layers) == 11


def test_explicit_in_features_that_contradicts_the_input() -> None:
    (p,) = _problems(WRONG_IN_FEATURES)
    # Located at the explicit value that is wrong, on the layer's line.
    assert p.where == f"r.yaml:{_line(WRONG_IN_FEATURES)}:{_col(WRONG_IN_FEATURES, '3136')}"
    assert p.field == "model.layers[4].in_features"
    assert p.message == "layer 4 (linear): expects 3136 inputs (in_features: 3136), gets 2048"
    assert "in_features is inferred" in p.hint


def test_explicit_sizes_that_agree_are_fine() -> None:
    load_recipe_text(WRONG_IN_FEATURES.replace("3136", "2048"))


@pytest.mark.parametrize(
    ("layers", "field", "message"),
    [
        (
            "[{type: conv2d, out_channels: 8, kernel_size: 3}, {type: linear, out_features: 10}]",
            "model.layers[1]",
            "layer 1 (linear): expects a flat (features,) input or a (time, features) sequence, "
            "gets (8, 26, 26); add {type: flatten} before it",
        ),
        (
            "[{type: flatten}, {type: linear, out_features: 64}, relu, {type: linear, out_features: 12}]",
            "model.layers[3]",  # the layer that gives the 12 outputs
            "the model outputs 12 values per sample, but mnist has 10 classes",
        ),
        (
            "[{type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}, {type: to_sequence},"
            " {type: lstm, hidden_size: 16}]",
            # the appended classifier head (no layer of the file) reads every time step
            "model.layers (classifier head)",
            "the model outputs shape (28, 10) per sample; a classifier needs (10,)",
        ),
        (
            "[{type: maxpool2d, kernel_size: 2}, {type: maxpool2d, kernel_size: 2},"
            " {type: maxpool2d, kernel_size: 2}, {type: maxpool2d, kernel_size: 2}, {type: flatten}]",
            "model.layers[3]",
            "layer 3 (maxpool2d): kernel_size 2 is larger than the input's height 1",
        ),
    ],
)
def test_shape_problems_are_located_at_their_layer(layers: str, field: str, message: str) -> None:
    dataset = "digits" if "maxpool2d, kernel_size: 2}, {type: maxpool2d" in layers else "mnist"
    text = f"data: {{dataset: {dataset}}}\nmodel:\n  layers: {layers}\n"
    (p,) = _problems(text)
    assert p.message == message
    assert p.field == field
    # The flow list is on line 3 after "  layers: "; a layer's problem points at that layer's
    # own entry, the classifier head's (not a layer of the file) at the list itself.
    prefix = len("  layers: ")
    if field.startswith("model.layers["):
        index = int(field[len("model.layers[") : -1])
        assert p.where == f"r.yaml:3:{prefix + _flow_entry_offsets(layers)[index] + 1}"
    else:
        assert p.where == f"r.yaml:3:{prefix + 1}"


def _flow_entry_offsets(flow: str) -> list[int]:
    """0-based offsets of the entries of a one-line YAML flow list (``[a, {b: 1}, c]``)."""
    offsets, depth = [1], 0
    for i, ch in enumerate(flow):
        depth += (ch == "{") - (ch == "}")
        if depth == 0 and ch == ",":
            offsets.append(i + 1 + len(flow[i + 1 :]) - len(flow[i + 1 :].lstrip()))
    return offsets


def test_audio_input_shape_follows_the_feature_settings() -> None:
    # Default features are 128 mels x 32 frames: after two 2x2 pools the LSTM sees 8 steps of
    # 64*32 features, so an explicit input_size of 1024 (right for 64 mels) is wrong here.
    text = textwrap.dedent(
        """\
        data: {dataset: fsdd}
        model:
          layers:
            - {type: conv2d, out_channels: 64, kernel_size: 3, padding: 1}
            - {type: maxpool2d, kernel_size: 4}
            - {type: to_sequence}
            - {type: lstm, hidden_size: 8, input_size: 1024, return: last}
        """
    )
    (p,) = _problems(text)
    assert p.message == ("layer 3 (lstm): expects 1024 features per step (input_size: 1024), gets 2048")
    ok = text.replace("data: {dataset: fsdd}", "data: {dataset: fsdd, features: {n_mels: 64}}")
    load_recipe_text(ok)


def test_set_override_is_named_as_the_location() -> None:
    from mnistkit.recipe.schema import validate_document
    from mnistkit.recipe.yamlio import load_text

    doc = load_text(WRONG_IN_FEATURES.replace("in_features: 3136, ", ""), "r.yaml")
    with pytest.raises(RecipeError) as exc:
        validate_document(doc, ["model.layers.4.in_features=99"])
    (p,) = exc.value.problems
    assert p.where == "--set model.layers.4.in_features=99"
    assert "expects 99 inputs (in_features: 99), gets 2048" in p.message


def test_mlp_shorthand_and_existing_recipes_still_validate() -> None:
    for path in RECIPES:
        load_recipe_text(path.read_text(), str(path))


# ----------------------------------------------------------------------------------- CLI
def test_cli_validate_reports_the_tutorial_mistake(cli, tmp_path: Path) -> None:  # noqa: ANN001
    bad = _write(tmp_path, "tutorial.yaml", TUTORIAL_MISTAKE)
    wrong = _write(tmp_path, "wrong.yaml", WRONG_IN_FEATURES)
    r = cli("validate", bad, wrong, REPO / "recipes" / "fsdd-cnn-lstm-attn.yaml")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert (
        f"{bad}:{_line(TUTORIAL_MISTAKE)}:7: model.layers[8]: layer 8 (lstm): expects a "
        "(time, features) sequence, gets (64, 16, 16); add {type: to_sequence} before it"
    ) in r.stderr
    assert (
        f"{wrong}:{_line(WRONG_IN_FEATURES)}:{_col(WRONG_IN_FEATURES, '3136')}: "
        "model.layers[4].in_features: layer 4 (linear): expects 3136 "
        "inputs (in_features: 3136), gets 2048"
    ) in r.stderr
    assert "2 of 3 recipe(s) invalid" in r.stderr
    assert "ok " in r.stdout and "fsdd-cnn-lstm-attn.yaml" in r.stdout


def test_validate_does_not_import_torch(tmp_path: Path) -> None:
    bad = _write(tmp_path, "tutorial.yaml", TUTORIAL_MISTAKE)
    code = textwrap.dedent(
        """
        import sys
        from mnistkit.cli.app import app
        try:
            app(["validate", *sys.argv[1:]])
        except SystemExit as exc:
            print("exit", exc.code)
        print("torch imported:", "torch" in sys.modules)
        """
    )
    files = [*map(str, RECIPES), str(bad)]
    r = subprocess.run(
        [sys.executable, "-c", code, *files], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert "exit 2" in r.stdout, r.stderr  # the tutorial mistake was found...
    assert "torch imported: False" in r.stdout  # ...without torch
    assert sum(line.startswith("ok ") for line in r.stdout.splitlines()) == len(RECIPES)


def _cli_in_process(*args: str | Path) -> tuple[int, str, str]:
    """The CLI in this process (torch is already imported here: much faster than a subprocess)."""
    from typer.testing import CliRunner

    from mnistkit.cli.app import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_validate_build_passes_on_the_shipped_recipes() -> None:
    code, out, err = _cli_in_process("validate", "--build", *RECIPES)
    assert code == 0, err
    assert out.count("ok ") == len(RECIPES)


PLUGIN = '''\
"""Test plugin: layers without shape functions (only --build can check them)."""
from torch import nn


def five_in(in_shape):
    # Wrong on purpose: takes 5 features whatever it is given.
    return nn.Linear(5, 3), (3,)


def liar(in_shape):
    # Wrong on purpose: claims to halve the width but keeps it.
    return nn.Identity(), (in_shape[0] // 2,)


def crash(in_shape, **params):
    # A builder with a bug (or torch refusing its arguments): raises while building.
    raise ValueError(f"cannot use width {in_shape[-1]}\\nsecond line")


def register(reg):
    reg.layers.register("five_in", "shapes_test_plugin:five_in", "linear from 5 features")
    reg.layers.register("liar", "shapes_test_plugin:liar", "claims the wrong output shape")
    reg.layers.register("crash", "shapes_test_plugin:crash", "raises while building")
'''


def test_build_catches_what_static_inference_cannot_see(tmp_path: Path) -> None:
    (tmp_path / "shapes_test_plugin.py").write_text(PLUGIN)
    head = "plugins: [shapes_test_plugin]\ndata: {dataset: mnist}\nmodel:\n  layers:\n"
    five = _write(tmp_path, "five.yaml", head + "    - {type: flatten}\n    - {type: five_in}\n")
    liar = _write(tmp_path, "liar.yaml", head + "    - {type: flatten}\n    - {type: liar}\n")
    code, out, err = _cli_in_process("validate", five, liar)
    assert code == 0, err
    assert "layer 1 (five_in) has no shape function" in err

    code, out, err = _cli_in_process("validate", "--build", five, liar)
    assert code == 2
    assert "Traceback" not in err
    assert (
        f"{five}:6:7: model.layers[1]: layer 1 (five_in): forward pass failed on input (784,) "
        "(batch of 2): RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    ) in err
    assert (
        f"{liar}:6:7: model.layers[1]: layer 1 (liar): its builder says it outputs (392,), "
        "the forward pass gives (784,)"
    ) in err
    assert "2 of 2 recipe(s) invalid" in err


def test_build_names_the_layer_whose_builder_raises(tmp_path: Path) -> None:
    (tmp_path / "shapes_test_plugin.py").write_text(PLUGIN)
    text = (
        "plugins: [shapes_test_plugin]\ndata: {dataset: mnist}\nmodel:\n  layers:\n"
        "    - {type: flatten}\n    - {type: linear, out_features: 12}\n    - {type: crash}\n"
    )
    path = _write(tmp_path, "crash.yaml", text)
    code, out, err = _cli_in_process("validate", "--build", path)
    assert code == 2
    assert "Traceback" not in err
    assert (
        f"{path}:7:7: model.layers[2]: layer 2 (crash): cannot be built for input (12,): "
        "ValueError: cannot use width 12"
    ) in err
    assert "second line" not in err


def test_build_blames_a_layer_written_by_set_on_that_set(tmp_path: Path) -> None:
    """`validate --build` mapped errors to the file's lines even for a layer a --set replaced."""
    (tmp_path / "shapes_test_plugin.py").write_text(PLUGIN)
    text = (
        "plugins: [shapes_test_plugin]\ndata: {dataset: mnist}\nmodel:\n  layers:\n"
        "    - {type: flatten}\n    - {type: linear, out_features: 12}\n    - {type: relu}\n"
    )
    path = _write(tmp_path, "ok.yaml", text)
    code, out, err = _cli_in_process("validate", "--build", path, "--set", "model.layers.2={type: crash}")
    assert code == 2
    assert "--set model.layers.2={type: crash}: model.layers[2]: layer 2 (crash): cannot be built" in err
    assert f"{path}:7" not in err
