"""BatchNorm keeps running statistics and a trained model uses them (issue 17).

A digits CNN with ``batchnorm2d`` and ``batchnorm1d``, trained one epoch:

* its checkpoint holds each BatchNorm's running mean, variance and update count, moved by
  training away from BatchNorm's initial 0 / 1 (a BatchNorm built without running statistics,
  ``track_running_stats=False``, holds none and normalizes every batch by the batch itself);
* the model rebuilt from the checkpoint, as ``mnistkit eval`` and ``predict`` rebuild it, gives
  a sample the same logits alone as in a batch of the whole test set;
* the ONNX export (``mnistkit export``, run in ONNX Runtime) gives those same logits, alone and
  in one batch, and ``mnistkit eval model.onnx`` the checkpoint's accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import invoke, train

from mnistkit.export import metadata

RECIPE = """\
name: digits-bn
seed: 4
data: {dataset: digits, batch_size: 64}
model:
  layers:
    - {type: conv2d, out_channels: 6, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: flatten}
    - {type: linear, out_features: 32}
    - {type: batchnorm1d}
    - {type: relu}
    - {type: linear, out_features: 10}
optimizer: {name: adam, lr: 0.01}
epochs: 1
train: {progress: none, threads: 1, plots: false}
"""
BN_LAYERS = {"1": 6, "6": 32}  # layer index in the recipe's list -> channels
STEPS = 23  # digits' 1,438 training images in batches of 64


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("bn"), RECIPE)


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    """digits' test images, raw uint8 ``[359, 1, 8, 8]``, as the exported model takes them."""
    from mnistkit.data.vision import load_sklearn_digits

    return load_sklearn_digits().test.x


def test_checkpoint_holds_running_statistics_moved_by_training(run: Path) -> None:
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    buffers = {k.rsplit(".", 1)[0] for k in state if k.endswith(("running_mean", "running_var"))}
    assert {k.split(".")[-1] for k in buffers} == set(BN_LAYERS), f"running statistics of {sorted(buffers)}"
    for layer in sorted(buffers):
        channels = BN_LAYERS[layer.split(".")[-1]]
        mean, var = state[f"{layer}.running_mean"], state[f"{layer}.running_var"]
        assert mean.shape == var.shape == (channels,)
        assert int(state[f"{layer}.num_batches_tracked"]) == STEPS  # one update per training step
        assert not torch.equal(mean, torch.zeros(channels)), f"{layer}: running mean never updated"
        assert not torch.equal(var, torch.ones(channels)), f"{layer}: running variance never updated"
        assert bool((var > 0).all())


def _checkpoint_logits(run: Path, x: torch.Tensor) -> torch.Tensor:
    """The checkpoint's logits for raw images, the model rebuilt as eval/predict rebuild it."""
    from mnistkit.data.batches import to_float
    from mnistkit.evaluation.predict import input_scale, load_predictor

    pred = load_predictor(run, "last")
    assert not pred.model.training
    info = pred.info
    with torch.inference_mode():
        return pred.model(to_float(x, tuple(info["mean"]), tuple(info["std"]), input_scale(info)))


def test_a_samples_logits_do_not_depend_on_its_batch(run: Path, test_images: torch.Tensor) -> None:
    # Pairs rather than single samples: a BatchNorm on batch statistics would refuse a batch of
    # one (batchnorm1d), and the point is a wrong answer, not a refusal.
    whole = _checkpoint_logits(run, test_images)
    n = len(test_images)
    for i in range(5):
        pair = _checkpoint_logits(run, test_images[[i, n - 1 - i]])
        assert float((pair[0] - whole[i]).abs().max()) <= metadata.DEFAULT_TOLERANCE, f"sample {i}"
        assert float((pair[1] - whole[n - 1 - i]).abs().max()) <= metadata.DEFAULT_TOLERANCE


def test_onnx_export_gives_the_checkpoints_logits(run: Path, test_images: torch.Tensor) -> None:
    res = invoke("export", run, "--checkpoint", "last", "--json")
    assert res.exit_code == 0, res.output
    model = run / "export" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = _checkpoint_logits(run, test_images).numpy()
    batch, _ = session.run(None, {"input": test_images.numpy()})
    assert np.abs(batch - want).max() <= metadata.DEFAULT_TOLERANCE
    for i in range(5):
        alone, _ = session.run(None, {"input": test_images[i : i + 1].numpy()})
        assert np.abs(alone[0] - want[i]).max() <= metadata.DEFAULT_TOLERANCE, f"sample {i}"
    # `mnistkit eval` of the run and of its export: the same accuracy on the same test set.
    res = invoke("eval", run, "--checkpoint", "last")
    assert res.exit_code == 0, res.output
    checkpoint_acc = json.loads((run / "eval-last.json").read_text())["accuracy"]
    from mnistkit.export.evaluate import evaluate_onnx

    onnx_eval: dict[str, Any] = evaluate_onnx(model)
    assert onnx_eval["accuracy"] == checkpoint_acc
    assert checkpoint_acc == float((want.argmax(1) == _labels()).mean())


def _labels() -> np.ndarray:
    from mnistkit.data.vision import load_sklearn_digits

    return load_sklearn_digits().test.y.numpy()


# The intentional form of a check test_export.py makes by accident (it fills every BatchNorm's
# running statistics, and crashes on None): every shipped recipe's BatchNorm layers, as built.
REPO = Path(__file__).resolve().parents[1]
WITH_BN = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml") if "batchnorm" in p.read_text())


@pytest.mark.parametrize("name", WITH_BN)
def test_shipped_recipes_batchnorm_layers_normalize_with_running_statistics(name: str) -> None:
    from mnistkit.build.components import build_model
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.registry import registries

    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    feats = recipe.data.features
    in_shape = (1, 8, 8) if recipe.data.dataset == "digits" else (1, 28, 28)
    if feats is not None:
        in_shape = (1, feats.n_mels, feats.frames)
    torch.manual_seed(0)
    model, _ = build_model(recipe, in_shape, 10, registries())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        pytest.skip(f"{name}: no BatchNorm")
    for i, m in enumerate(norms):
        assert m.running_mean is not None and m.running_var is not None, (
            f"BatchNorm {i}: no running statistics"
        )
    model.eval()
    x = torch.randn((4, *in_shape), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batch = model(x)
        for i in range(len(x)):
            alone = model(x[i : i + 1])[0]
            assert float((alone - batch[i]).abs().max()) <= metadata.DEFAULT_TOLERANCE, f"sample {i}"
