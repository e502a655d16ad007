"""The validation split (``data.val_split``, issue 17), checked against the files it comes from.

An image folder with its own ``train/`` and ``test/`` folders, written here: every 8x8 picture
carries its own number in two pixels, so each sample the model sees is identified by its content,
not by the program's index lists. During a run the model's forward pass is watched: what it sees
in train mode is what it is trained on. The validation split

* comes from the training files only, never from the test files;
* is disjoint from what is trained on, and with it covers every training file exactly once;
* has ``round(val_split * training files)`` samples;
* is seeded: the same seed draws the same files, another seed other files;
* is the same files, and training never sees them, after ``--resume``.

(Its size and metrics with two processes, and after a distributed resume, are checked in
test_distributed.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import invoke, train
from PIL import Image

from mnistkit.runs.directory import RunDir

CLASSES = ("a", "b")
N_TRAIN, N_TEST = 60, 20  # per class
VAL_SPLIT = 0.25
N_VAL = round(VAL_SPLIT * N_TRAIN * len(CLASSES))  # 30
TRAIN_IDS = set(range(N_TRAIN * len(CLASSES)))  # numbers 0..119 are in train/, 120..159 in test/
TEST_IDS = set(range(len(TRAIN_IDS), len(TRAIN_IDS) + N_TEST * len(CLASSES)))

RECIPE = """\
name: val-split
seed: {seed}
data:
  dataset: image_folder
  image: {{channels: 1, size: [8, 8]}}
  batch_size: 16
  val_split: 0.25
model: {{hidden: [16]}}
optimizer: {{name: sgd, lr: 0.05}}
epochs: 1
train: {{progress: none, threads: 1, plots: false}}
"""


def _pixels(number: int) -> np.ndarray:
    """Picture ``number``: 8x8 grey noise whose first two pixels spell the number."""
    pixels = np.random.default_rng(number).integers(0, 256, (8, 8), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = number % 256, number // 256
    return pixels


def _write(path: Path, number: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(number), "L").save(path, "PNG")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    number = 0
    for part, per_class in (("train", N_TRAIN), ("test", N_TEST)):
        for c in CLASSES:
            for i in range(per_class):
                _write(root / part / c / f"{i:03d}.png", number)
                number += 1
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MNISTKIT_DATA", raising=False)


def _numbers(x: torch.Tensor, info: dict[str, Any]) -> list[int]:
    """The pictures' numbers in normalized model inputs ``[N, 1, 8, 8]`` (undoing data.json's
    normalization: ``raw = (x * std + mean) * 255``); each whole picture must be that file's."""
    raw = torch.round((x[:, 0].double() * info["std"][0] + info["mean"][0]) * 255).long().numpy()
    numbers = [int(r[0, 0]) + 256 * int(r[0, 1]) for r in raw]
    for number, r in zip(numbers, raw, strict=True):
        assert np.array_equal(r, _pixels(number)), f"an input that is no picture written here ({number}?)"
    return numbers


def _watched_run(tmp: Path, folder: Path, seed: int, *args: str) -> dict[str, Any]:
    """Run (or ``--resume``, with ``args``) and return the numbers of the samples the model was
    trained on, those of the validation and test splits it was evaluated on, and the run."""
    import mnistkit.session as session

    real = session.train_loop
    seen: dict[str, Any] = {}

    def watched(recipe: Any, data: Any, model: torch.nn.Module, *a: Any, **kw: Any) -> Any:
        trained: list[torch.Tensor] = []

        def spy(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                trained.append(inputs[0].detach().clone())

        hook = model.register_forward_pre_hook(spy)
        try:
            return real(recipe, data, model, *a, **kw)
        finally:
            hook.remove()
            seen.update(trained=trained, val=data.val.x.clone(), test=data.test.x.clone())

    tmp.mkdir(parents=True, exist_ok=True)
    run = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session, "train_loop", watched)
        if args:
            res = invoke("run", "--resume", run, *args)
            assert res.exit_code == 0, res.output
        else:
            train(tmp, RECIPE.format(seed=seed), data_dir=folder)
    info = json.loads((run / "data.json").read_text())
    trained = [n for x in seen["trained"] for n in _numbers(x, info)]
    return {
        "run": run,
        "trained": trained,
        "val": _numbers(seen["val"], info),
        "test": _numbers(seen["test"], info),
    }


@pytest.fixture(scope="module")
def seed_1(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> dict[str, Any]:
    return _watched_run(tmp_path_factory.mktemp("seed1"), folder, 1)


def test_val_comes_from_the_training_files_and_is_never_trained_on(seed_1: dict[str, Any]) -> None:
    val, trained = seed_1["val"], seed_1["trained"]
    assert len(val) == len(set(val)) == N_VAL
    assert set(val) <= TRAIN_IDS, f"not training files: {sorted(set(val) - TRAIN_IDS)}"
    assert not set(val) & TEST_IDS
    assert not set(val) & set(trained), f"trained on: {sorted(set(val) & set(trained))}"
    # One epoch: every other training file exactly once.
    assert sorted(trained) == sorted(TRAIN_IDS - set(val))
    # The test split is the test files, all of them.
    assert sorted(seed_1["test"]) == sorted(TEST_IDS)


def test_val_is_seeded(tmp_path: Path, folder: Path, seed_1: dict[str, Any]) -> None:
    same = _watched_run(tmp_path / "same", folder, 1)
    other = _watched_run(tmp_path / "other", folder, 2)
    assert sorted(same["val"]) == sorted(seed_1["val"])
    assert len(other["val"]) == N_VAL and sorted(other["val"]) != sorted(seed_1["val"])
    assert set(other["val"]) <= TRAIN_IDS and not set(other["val"]) & set(other["trained"])


def test_val_is_the_same_files_after_resume(tmp_path: Path, folder: Path) -> None:
    first = _watched_run(tmp_path, folder, 3)
    resumed = _watched_run(tmp_path, folder, 3, "--set", "epochs=2")
    assert [r["epoch"] for r in RunDir(resumed["run"]).read_metrics()] == [1, 2]
    assert len(resumed["val"]) == N_VAL and sorted(resumed["val"]) == sorted(first["val"])
    assert sorted(resumed["trained"]) == sorted(TRAIN_IDS - set(first["val"]))
