"""data.augment (issue 14): the ops, the recipe key, the training loop hook, resume.

The ops are checked directly on batches (shape and dtype kept, identity at zero strength,
deterministic for a seed, different across batches, what each one does to the pixels); the
hook through real runs on the bundled `digits` data: augmentation reaches training batches
only, and a run killed with SIGKILL mid-epoch and resumed ends with the exact weights and
metrics of an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.data import augment as A
from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.runs.directory import RunDir
from mnistkit.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Every built-in at a strength that changes most samples, and at zero strength.
STRONG: dict[str, dict[str, Any]] = {
    "random_crop": {"padding": 3},
    "horizontal_flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "random_affine": {"degrees": 20, "translate": (0.1, 0.1), "scale": (0.8, 1.2), "shear": 10},
    "random_erasing": {"p": 0.9},
}
ZERO: dict[str, dict[str, Any]] = {
    "random_crop": {"padding": 0},
    "horizontal_flip": {"p": 0.0},
    "vertical_flip": {"p": 0.0},
    "random_affine": {},  # the defaults: no rotation, shift, zoom or shear
    "random_erasing": {"p": 0.0},
}


def batch(
    dtype: torch.dtype = torch.uint8, n: int = 64, shape: tuple[int, ...] = (1, 28, 28)
) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return torch.randn((n, *shape), generator=g).to(dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_builtin_is_covered() -> None:
    from mnistkit.registry import registries

    assert set(registries().augmentations.names()) == set(STRONG) == set(ZERO)


@pytest.mark.parametrize("name", sorted(STRONG))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_kept_and_samples_changed(name: str, dtype: torch.dtype) -> None:
    x = batch(dtype, shape=(3, 20, 24))  # RGB, not square
    y = getattr(A, name)(**STRONG[name])(x, gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    changed = (y != x).flatten(1).any(1)
    # Per-sample parameters: some samples change, and (p < 1, or a draw of 0) not all alike.
    assert changed.sum() >= 10, f"{name} changed only {int(changed.sum())} of 64 samples"


@pytest.mark.parametrize("name", sorted(ZERO))
def test_identity_at_zero_strength(name: str) -> None:
    x = batch()
    assert torch.equal(getattr(A, name)(**ZERO[name])(x, gen()), x)
    xf = batch(torch.float32)
    assert torch.allclose(getattr(A, name)(**ZERO[name])(xf, gen()), xf, atol=1e-5)


@pytest.mark.parametrize("name", sorted(STRONG))
def test_deterministic_for_a_seed_and_different_across_batches(name: str) -> None:
    x = batch()
    op = getattr(A, name)(**STRONG[name])
    g1, g2 = gen(7), gen(7)
    first, again = op(x, g1), op(x, g2)
    assert torch.equal(first, again)  # same seed, same augmentation
    second = op(x, g1)  # the next batch of the same run draws new parameters
    assert not torch.equal(first, second)
    assert not torch.equal(op(x, gen(8)), first)  # another seed, another augmentation


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = batch(n=32)
    offsets = torch.randint(0, 5, (32, 2), generator=gen(5))  # the op's one draw
    y = A.random_crop(padding=2)(x, gen(5))
    padded = F.pad(x, (2, 2, 2, 2))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(y[i], padded[i, :, dy : dy + 28, dx : dx + 28])


def test_flips_mirror_exactly_the_drawn_samples() -> None:
    x = batch()
    chosen = torch.rand(64, generator=gen(3)) < 0.5
    y = A.horizontal_flip(p=0.5)(x, gen(3))
    assert torch.equal(y[chosen], x[chosen].flip(-1)) and torch.equal(y[~chosen], x[~chosen])
    y = A.vertical_flip(p=1.0)(x, gen(3))
    assert torch.equal(y, x.flip(-2))


def test_random_affine_matches_torchvision_for_a_pure_rotation() -> None:
    from torchvision.transforms.v2 import functional as TF

    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 4:24, 12:16] = 255  # a vertical bar
    # degrees d draws U(-d, d) from the generator's first number: find the angle it will use.
    u = torch.rand(1, 5, generator=gen(11), dtype=torch.float64)
    angle = float((u[0, 0] * 2 - 1) * 40)
    ours = A.random_affine(degrees=40)(x, gen(11))
    theirs = TF.rotate(x.float(), angle, interpolation=TF.InterpolationMode.BILINEAR)
    # Same rotation (sense and centre): the bars overlap almost entirely; torchvision's own
    # pixel grid differs from grid_sample's by rounding at the edges of the bar.
    a, b = ours[0, 0].float() / 255, theirs[0, 0] / 255
    overlap = (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum())
    assert overlap > 0.95, (angle, float(overlap))


def test_random_erasing_fills_one_rectangle_with_the_value() -> None:
    x = torch.full((16, 1, 28, 28), 200, dtype=torch.uint8)
    y = A.random_erasing(p=1.0, scale=(0.1, 0.2), value=0.5)(x, gen())
    for img in y[:, 0]:
        erased = img != 200
        assert set(img[erased].unique().tolist()) == {128}  # 0.5 in pixel units
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert int(erased.sum()) == h * w  # a filled rectangle
        assert 0.05 * 784 <= h * w <= 0.25 * 784


def test_pipeline_needs_image_batches() -> None:
    aug = A.Augment([A.horizontal_flip()], ["horizontal_flip"])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        aug(torch.zeros(4, 784), gen())


# --------------------------------------------------------------------------------- recipes
BASE = "data: {{dataset: digits, augment: {augment}}}\nmodel: {{hidden: [8]}}\n"


def test_recipe_validates_augmentations_at_their_lines() -> None:
    recipe = load_recipe_text(BASE.format(augment="[{type: random_crop, padding: 1}, horizontal_flip]"))
    assert [a.type for a in recipe.data.augment] == ["random_crop", "horizontal_flip"]
    text = (
        "data:\n  dataset: digits\n  augment:\n    - {type: random_crop}\n    - {type: random_flip}\n"
        "model: {hidden: [8]}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "r.yaml")
    out = str(info.value)
    assert "r.yaml:5:" in out and "unknown augmentation type 'random_flip'" in out
    assert "did you mean" in out and "horizontal_flip" in out
    with pytest.raises(RecipeError) as info:
        load_recipe_text(BASE.format(augment="[{type: horizontal_flip, p: 1.5}]"), "r.yaml")
    assert "data.augment[0].p" in str(info.value) and "less than or equal to 1" in str(info.value)
    with pytest.raises(RecipeError) as info:
        load_recipe_text(BASE.format(augment="[{type: random_affine, scale: [1.2, 0.8]}]"), "r.yaml")
    assert "data.augment[0].scale" in str(info.value) and "write [0.8, 1.2]" in str(info.value)
    assert "low must not exceed high" in str(info.value)


# ----------------------------------------------------------------------- the training loop
SPY_PLUGIN = """
import torch

SEEN = []


def spy(*, tag: int = 0):
    def op(x, g):
        SEEN.append((tuple(x.shape), x.dtype, float(torch.rand(1, generator=g))))
        return x
    return op


def register(reg):
    reg.augmentations.register("spy", "{module}:spy", "records every batch it sees")
"""


def test_plugin_augmentation_sees_training_batches_only(tmp_path: Path) -> None:
    module = "augspy_" + "".join(c for c in tmp_path.name if c.isalnum())
    (tmp_path / f"{module}.py").write_text(SPY_PLUGIN.replace("{module}", module))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        plugins: [{module}]
        data: {{dataset: digits, batch_size: 100, limit: 450, augment: [{{type: spy}}]}}
        model: {{hidden: [16]}}
        epochs: 2
        train: {{threads: 1, plots: false, progress: none}}
        """)
    )
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    seen = sys.modules[module].SEEN
    # 450 training images in batches of 100: 5 batches per epoch, the last one 50; the 360 test
    # images (evaluated after every epoch) never pass through it.
    sizes = [s[0][0] for s in seen]
    assert sizes == [100, 100, 100, 100, 50] * 2
    assert {s[0][1:] for s in seen} == {(1, 8, 8)} and {s[1] for s in seen} == {torch.uint8}
    assert len({s[2] for s in seen}) == 10  # drawn from the run's generator, advancing
    # eval of the finished run: the same test accuracy as the last epoch (nothing augmented).
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert len(seen) == 10


def test_augmentation_changes_training_not_evaluation_inputs(tmp_path: Path) -> None:
    common = (
        "model: {hidden: [16]}\noptimizer: {name: adam, lr: 0.01}\nepochs: 2\nseed: 1\n"
        "train: {threads: 1, plots: false, progress: none}\n"
    )
    plain = "data: {dataset: digits, batch_size: 64}\n" + common
    erased = (
        "data: {dataset: digits, batch_size: 64, augment: [{type: random_erasing, p: 1.0, scale: [1.0, 1.0],"
        " ratio: [1.0, 1.0]}]}\n" + common
    )
    rows = {}
    for name, text in (("plain", plain), ("erased", erased)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        rows[name] = RunDir(tmp_path / name).read_metrics()[-1]
    # Every training image erased to black: the model learns nothing but the class prior...
    assert float(rows["erased"]["train_acc"]) < 0.2 < float(rows["plain"]["train_acc"])
    # ...and the test images it is evaluated on are the real ones (its guesses are bad on them).
    assert float(rows["plain"]["test_acc"]) > 0.5


RESUME_RECIPE = """\
name: aug-resume
seed: 5
data:
  dataset: digits
  batch_size: 64
  augment:
    - {type: random_crop, padding: 1}
    - {type: random_affine, degrees: 10, translate: [0.1, 0.1]}
    - {type: random_erasing, p: 0.3}
model: {hidden: [32], dropout: 0.1}
optimizer: {name: adam, lr: 0.003}
epochs: 3
train: {plots: false, progress: none, threads: 1}
"""


def test_kill_9_mid_epoch_with_augmentation_resumes_exactly(tmp_path: Path) -> None:
    recipe = tmp_path / "aug.yaml"
    recipe.write_text(RESUME_RECIPE)
    env = {k: v for k, v in os.environ.items() if k not in ("MNISTKIT_DATA", "MNISTKIT_KILL_AT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["MNISTKIT_CACHE"] = str(tmp_path / "cache")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(killed), "--progress", "plain"],
        env={**env, "MNISTKIT_KILL_AT": "2:9"},  # SIGKILL in step 9 of epoch 2 (of 23)
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ref = tmp_path / "ref"  # the uninterrupted run, while the other one starts up
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(ref)])
    assert res.exit_code == 0, res.output
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out
    assert len(RunDir(killed).read_metrics()) == 1

    res = CliRunner().invoke(app, ["run", "--resume", str(killed), "--progress", "plain"])
    assert res.exit_code == 0, res.output
    cols = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [{k: r[k] for k in cols} for r in RunDir(killed).read_metrics()] == [
        {k: r[k] for k in cols} for r in RunDir(ref).read_metrics()
    ]
    want, got = load_checkpoint(ref / "last.pt"), load_checkpoint(killed / "last.pt")
    for key, tensor in want["model"].items():
        assert torch.equal(got["model"][key], tensor), key
    assert torch.equal(got["generator"], want["generator"])  # the augmentation stream too


def test_resume_would_differ_without_the_augmentation_stream(tmp_path: Path) -> None:
    # The check above can fail: a run with the same seed but a different augmentation stream
    # (another op order) ends with different weights.
    texts = {
        "a": RESUME_RECIPE.replace("epochs: 3", "epochs: 1"),
        "b": RESUME_RECIPE.replace("epochs: 3", "epochs: 1").replace("p: 0.3", "p: 0.31"),
    }
    weights = {}
    for name, text in texts.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    assert any(not torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
