"""The data check and class imbalance (issue 22).

Duplicate figures are checked against an independent computation written here (hashlib over
each sample's bytes, a dict of first occurrences), never against the module's own functions;
the synthetic folder's figures are known by construction (the test plants them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_dataset

from mnistkit.build.components import build_loss
from mnistkit.data.batches import balanced_weights, epoch_order
from mnistkit.data.check import check_arrays, digest_keys
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.registry import registries


# ------------------------------------------------------------------ independent reference
def reference(train: list[bytes], test: list[bytes]) -> tuple[int, int, int]:
    """(copies within train, copies within test, test samples equal to a training sample)."""

    def digests(rows: list[bytes]) -> list[str]:
        return [hashlib.sha256(r).hexdigest() for r in rows]

    tr, te = digests(train), digests(test)
    in_train = set(tr)
    return len(tr) - len(in_train), len(te) - len(set(te)), sum(d in in_train for d in te)


def read_idx(path: Path, header: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=header)


def test_fashion_mnist_duplicates_match_an_independent_count(shared_data: Path) -> None:
    folder = real_dataset(shared_data, "fashion-mnist")
    x = read_idx(folder / "train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = read_idx(folder / "train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    xt = read_idx(folder / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    yt = read_idx(folder / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    report = check_arrays(x, y, xt, yt, [str(i) for i in range(10)])
    expected = reference([r.tobytes() for r in x], [r.tobytes() for r in xt])
    d = report["duplicates"]
    got = (d["train"]["copies"], d["test"]["copies"], d["train_test"]["test_samples"])
    assert got == expected
    assert report["splits"]["train"]["counts"] == np.bincount(y).tolist()
    assert report["splits"]["train"]["imbalance"] == 1.0  # 6,000 of each class


def test_mnist_test_set_duplicates_within_itself(shared_data: Path) -> None:
    folder = real_dataset(shared_data, "mnist-test10k")
    x = read_idx(next(folder.glob("t10k-images-idx3-ubyte*")), 16).reshape(-1, 1, 28, 28)
    y = read_idx(next(folder.glob("t10k-labels-idx1-ubyte*")), 8).astype(np.int64)
    # The test set checked as if it were a training set, against an empty test set.
    report = check_arrays(x, y, x[:0], y[:0], [str(i) for i in range(10)])
    copies, _, _ = reference([r.tobytes() for r in x], [])
    assert report["duplicates"]["train"]["copies"] == copies
    counts = np.bincount(y, minlength=10)
    assert report["splits"]["train"]["imbalance"] == pytest.approx(counts.max() / counts.min())


def test_fsdd_duplicates_by_decoded_samples(shared_data: Path) -> None:
    import soundfile as sf

    from mnistkit.data.audio import read_audio

    folder = real_dataset(shared_data, "fsdd/recordings")
    files = sorted(folder.glob("*.wav"))
    test = [f for f in files if int(f.stem.split("_")[2]) < 5]  # FSDD's official split
    train = [f for f in files if int(f.stem.split("_")[2]) >= 5]
    keys = [digest_keys([read_audio(f, 8000) for f in fs]) for fs in (train, test)]
    labels = [np.array([int(f.name[0]) for f in fs]) for fs in (train, test)]
    report = check_arrays(
        np.zeros((len(train), 1)), labels[0], np.zeros((len(test), 1)), labels[1],
        [str(i) for i in range(10)], train_keys=keys[0], test_keys=keys[1],
    )  # fmt: skip
    # Independently: the 16-bit PCM samples as stored (8 kHz files: no resampling either way).
    pcm = [[sf.read(str(f), dtype="int16")[0].tobytes() for f in fs] for fs in (train, test)]
    d = report["duplicates"]
    got = (d["train"]["copies"], d["test"]["copies"], d["train_test"]["test_samples"])
    assert got == reference(pcm[0], pcm[1])


# ------------------------------------------------------------------ a planted folder
def _png(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ with classes a and b, 28x28 grey; planted: one copy within train (same
    pixels saved as BMP under another name), one test image that is a training image (a leak),
    one file that is no image, one 40x30 RGB image among 28x28 L ones."""
    # A deep folder, as users have: the unreadable file's path alone is wider than a line.
    root = tmp_path_factory.mktemp("planted") / ("a-long-folder-name-" * 4)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    for i in range(4):
        _png(root / "train" / "a" / f"a{i}.png", imgs[i])
        _png(root / "train" / "b" / f"b{i}.png", imgs[4 + i])
    for i in range(2):
        _png(root / "test" / "a" / f"ta{i}.png", imgs[8 + i])
        _png(root / "test" / "b" / f"tb{i}.png", imgs[10 + i])
    _png(root / "train" / "a" / "copy_of_a1.bmp", imgs[1], "BMP")  # within train, re-encoded
    _png(root / "test" / "b" / "leak.png", imgs[5])  # = train/b/b1.png
    (root / "train" / "b" / "broken.png").write_bytes(b"not an image at all")
    odd = np.repeat(rng.integers(0, 256, size=(30, 40, 1), dtype=np.uint8), 3, axis=2)
    _png(root / "train" / "b" / "odd.png", odd)
    return root


RECIPE = """\
name: folder
data:
  dataset: image_folder
  image: {channels: 1, size: [28, 28]}
model:
  hidden: [8]
epochs: 1
"""


def test_planted_folder_check(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (what `mnistkit data check` runs; the run test below goes through the CLI)."""
    from mnistkit.cli.data_command import check_recipe_data, wrapped
    from mnistkit.data.check import summary_lines

    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    report, cached = check_recipe_data(recipe, [], planted)
    assert not cached
    stdout = "\n".join(wrapped(k, v) for k, v in summary_lines(report))
    assert max(map(len, stdout.splitlines())) <= 80, stdout
    for line in stdout.splitlines():  # a label, a colon and a space; or a continuation under it
        assert re.match(r"([a-z/ ]+: +\S| {12}\S)", line), line
    d = report["duplicates"]
    assert d["train"]["copies"] == 1
    assert sorted(Path(n).name for n in d["train"]["examples"][0]) == ["a1.png", "copy_of_a1.bmp"]
    assert d["test"]["copies"] == 0
    leak = d["train_test"]
    assert leak["test_samples"] == 1
    assert Path(leak["examples"][0]["test"]).name == "leak.png"
    assert Path(leak["examples"][0]["train"]).name == "b1.png"
    assert [Path(b["file"]).name for b in report["unreadable"]] == ["broken.png"]
    files = report["image_files"]
    assert files["usual"] == {"size": [28, 28], "mode": "L"}
    assert [(Path(e["file"]).name, e["size"], e["mode"]) for e in files["examples"]] == [
        ("odd.png", [40, 30], "RGB")
    ]
    assert report["splits"]["train"]["counts"] == [5, 5]  # a: 4 + copy; b: 4 + odd (broken left out)
    assert "leak.png = train b1.png" in " ".join(stdout.split())
    assert check_recipe_data(recipe, [], planted)[1]  # the second time: from the cache


def test_run_header_warns_of_the_leak(cli, planted: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + "train: {plots: false, checkpoint: false}\n")
    res = cli(
        "run", recipe, "--data-dir", planted, "--runs", tmp_path / "runs",
        "--set", "data.skip_bad_files=true", "--set", "loss.class_weights=auto",
        "--set", "data.sampler=balanced", "--progress", "plain",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "warning: 1 test sample is an exact copy of training samples" in text
    assert "leak.png = train b1.png" in text
    # 5 + 5 training images: auto weights n / (classes x count) = 10 / (2 x 5) = 1
    assert "class weights auto (n / (classes x count)): 1, 1" in text
    assert "sampler: balanced" in text
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "data_check.json").read_text())["duplicates"]["train_test"]["test_samples"] == 1


# ------------------------------------------------------------------ class weights, sampler
BASE = "name: w\ndata: {dataset: digits}\nmodel: {hidden: [8]}\n"


def test_class_weights_reach_the_loss() -> None:
    counts = [30, 10, 60]
    for loss in ("cross_entropy", "nll"):
        auto = load_recipe_text(BASE + f"loss: {{name: {loss}, class_weights: auto}}\n")
        built = build_loss(auto, registries(), counts)
        assert built.weight.tolist() == pytest.approx([100 / (3 * 30), 100 / (3 * 10), 100 / (3 * 60)])
        given = [0.5] * 9 + [2.0]
        listed = load_recipe_text(BASE + f"loss: {{name: {loss}, class_weights: {given}}}\n")
        assert build_loss(listed, registries(), [1] * 10).weight.tolist() == given
        assert build_loss(load_recipe_text(BASE), registries(), counts).weight is None


def test_class_weights_length_is_validated(cli, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "loss:\n  name: cross_entropy\n  class_weights: [1, 2]\n")
    res = cli("validate", recipe)
    assert res.returncode == 2
    err = " ".join(res.stderr.split())
    assert f"{recipe}:6:18: loss.class_weights: 2 weight(s) for dataset 'digits', which has 10 classes" in err
    assert "--set loss.class_weights=auto" in err
    res = cli("validate", recipe, "--set", "loss.class_weights=[1,0]")
    assert "expected auto or a list of numbers > 0, one per class" in res.stderr
    res = cli("validate", recipe, "--set", "loss.class_weights=auto", "--set", "data.sampler=balanced",
              "--set", "data.shuffle=false")  # fmt: skip
    assert res.returncode == 2
    assert "--set data.sampler=epoch" in " ".join(res.stderr.split())


def test_balanced_sampler_balances_classes() -> None:
    y = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    order = epoch_order(len(y), True, torch.Generator().manual_seed(0), balanced_weights(y, 3))
    share = torch.bincount(y[order], minlength=3).double() / len(y)
    assert len(order) == len(y)
    assert share.min() > 0.28 and share.max() < 0.39, share  # 1/3 each; unweighted: 0.9 / 0.01
    again = epoch_order(len(y), True, torch.Generator().manual_seed(0), balanced_weights(y, 3))
    assert torch.equal(order, again)  # seeded: a resumed run draws the same order
