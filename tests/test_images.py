"""data.dataset: image_folder (issue 14) on folders the tests write: PNG and JPEG, grey and RGB,
both layouts; the cache; every bad-file case through the CLI (message, exit 1, no traceback);
predict on such a run."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.data import images
from mnistkit.data.images import load_image_folder
from mnistkit.errors import DataError
from mnistkit.recipe.model_check import input_shape
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.registry import registries

CLASSES = ("boot", "cat", "shirt")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTKIT_DATA", raising=False)


def pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_image(path: Path, seed: int, mode: str = "L", fmt: str = "PNG", size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(pixels(seed, shape), mode).save(path, fmt)


def make_flat(root: Path, per_class: int = 10) -> None:
    """root/<class>/ with PNG and JPEG, grey and RGB files, 12x12."""
    for ci, c in enumerate(CLASSES):
        for i in range(per_class):
            mode = "L" if i % 2 == 0 else "RGB"
            fmt, ext = ("PNG", "png") if i % 3 else ("JPEG", "jpg")
            write_image(root / c / f"{i:02d}.{ext}", 100 * ci + i, mode, fmt)


def make_split(root: Path) -> None:
    for ci, c in enumerate(CLASSES):
        for i in range(4):
            write_image(root / "train" / c / f"{i}.png", 10 * ci + i)
        write_image(root / "test" / c / "0.png", 1000 + ci, "RGB")


def expected(path: Path, channels: int) -> np.ndarray:
    """What Pillow itself gives for the file: the reference the tensor must equal."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load(root: Path, channels: int = 1, size: tuple[int, int] = (12, 12), **kw: Any) -> Any:
    return load_image_folder(root, channels, size, Path(os.environ["MNISTKIT_CACHE"]), False, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_flat_folder_tensor_is_the_pixels_and_classes_are_folder_names(tmp_path: Path, channels: int) -> None:
    make_flat(tmp_path / "data")
    data = load(tmp_path / "data", channels)
    assert data.classes == list(CLASSES)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (channels, 12, 12)
    n_train = len(data.train.y)
    for i, f in enumerate(data.files):
        split, j = (data.train, i) if i < n_train else (data.test, i - n_train)
        assert np.array_equal(split.x[j].numpy(), expected(f, channels)), f
        assert data.classes[int(split.y[j])] == f.parent.name
    # normalize auto: the training split's per-channel mean/std of [0, 1] pixels
    want = data.train.x.double().mean(dim=(0, 2, 3)) / 255
    assert np.allclose(data.mean, want.numpy())


def test_flat_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    make_flat(tmp_path / "data")
    a = load(tmp_path / "data", test_fraction=0.2, seed=1)
    assert torch.bincount(a.test.y).tolist() == [2, 2, 2]  # 20 % of each class of 10
    assert torch.bincount(a.train.y).tolist() == [8, 8, 8]
    same = load(tmp_path / "data", test_fraction=0.2, seed=1)
    other = load(tmp_path / "data", test_fraction=0.2, seed=2)
    names = lambda d: [f.name for f in d.files]  # noqa: E731
    assert names(same) == names(a) and names(other) != names(a)


def test_train_test_layout_is_the_split(tmp_path: Path) -> None:
    make_split(tmp_path / "data")
    data = load(tmp_path / "data")
    assert data.classes == list(CLASSES)
    assert len(data.train.y) == 12 and len(data.test.y) == 3
    assert all("/test/" in f.as_posix() for f in data.files[12:])
    assert np.array_equal(data.test.x[0].numpy(), expected(tmp_path / "data/test/boot/0.png", 1))


def test_resized_once_as_predict_resizes(tmp_path: Path) -> None:
    make_flat(tmp_path / "data", per_class=2)
    data = load(tmp_path / "data", size=(7, 9))
    assert data.train.x.shape[1:] == (1, 7, 9)
    f = data.files[0]
    assert np.array_equal(data.train.x[0].numpy(), images.decode_image(f, 1, 7, 9))


def test_cache_is_used_then_invalidated_by_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_flat(tmp_path / "data", per_class=3)
    calls: list[Path] = []
    real = images.decode_image

    def counting(path: Path, *a: Any) -> np.ndarray:
        calls.append(path)
        return real(path, *a)

    monkeypatch.setattr(images, "decode_image", counting)
    first = load(tmp_path / "data")
    assert len(calls) == 9 and "decoded in" in first.source
    second = load(tmp_path / "data")
    assert len(calls) == 9 and "loaded from cache" in second.source  # nothing decoded again
    assert torch.equal(first.train.x, second.train.x)
    assert len(calls) == 9
    load(tmp_path / "data", channels=3)  # other image settings: another cache entry
    assert len(calls) == 18
    changed = tmp_path / "data/cat/01.png"
    write_image(changed, 999, "RGB")
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    third = load(tmp_path / "data")
    assert len(calls) == 19 and calls[-1] == changed  # only the changed file (issue 25)
    assert "1 decoded, 8 reused" in third.source
    row = third.files.index(changed)
    split, j = (third.train, row) if row < len(third.train.y) else (third.test, row - len(third.train.y))
    assert np.array_equal(split.x[j].numpy(), expected(changed, 1))


def test_image_settings_give_the_input_shape_without_files() -> None:
    text = "data: {dataset: image_folder, image: {channels: 3, size: [32, 24]}}\nmodel: {hidden: [8]}\n"
    recipe = load_recipe_text(text)
    assert input_shape(recipe, registries()) == (3, 32, 24)
    default = load_recipe_text("data: {dataset: image_folder}\nmodel: {hidden: [8]}\n")
    assert input_shape(default, registries()) == (1, 28, 28)
    bad = (
        "data: {dataset: image_folder, image: {channels: 3}}\n"
        "model:\n  layers:\n    - {type: conv2d, out_channels: 4, kernel_size: 3, in_channels: 1}\n"
    )
    with pytest.raises(Exception, match="in_channels"):
        load_recipe_text(bad)
    with pytest.raises(Exception, match="does not use data.image"):
        load_recipe_text("data: {dataset: digits, image: {channels: 1}}\nmodel: {hidden: [8]}\n")


# ---------------------------------------------------------------------------------- the CLI
RECIPE = """\
name: folder
data:
  dataset: image_folder
  image: {{channels: 1, size: [12, 12]}}
  batch_size: 8
  {extra}
model: {{hidden: [16]}}
epochs: 1
train: {{threads: 1, plots: false, progress: none}}
"""


def run_cli(tmp_path: Path, root: Path, extra: str = "", *args: str) -> Any:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(extra=extra))
    out = tmp_path / "run"
    return CliRunner().invoke(app, ["run", str(recipe), "--data-dir", str(root), "--out", str(out), *args])


def test_trains_and_predict_converts_new_images_the_same_way(tmp_path: Path) -> None:
    make_flat(tmp_path / "data", per_class=6)
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 0, res.output
    info = __import__("json").loads((tmp_path / "run/data.json").read_text())
    assert info["classes"] == list(CLASSES) and info["in_shape"] == [1, 12, 12]
    # A new RGB JPEG of another size: converted to 12x12 grey as the training files were.
    new = tmp_path / "new.jpg"
    write_image(new, 5, "RGB", "JPEG", size=40)
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(new), "--json"])
    assert res.exit_code == 0, res.output
    pred = __import__("json").loads(res.output)["predictions"][0]
    assert pred["class"] in CLASSES
    from mnistkit.evaluation.predict import image_tensor

    x = image_tensor(new, info)
    raw = torch.from_numpy(np.array(images.decode_image(new, 1, 12, 12))).double() / 255
    want = (raw - info["mean"][0]) / info["std"][0]
    assert torch.allclose(x[0].double(), want, atol=1e-5)


def _truncated(path: Path) -> None:
    write_image(path, 1, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bomb(path: Path) -> None:
    # 10,000 x 10,000 one-bit pixels: 100 MP, over Pillow's 89.5 MP limit, a few KB as PNG.
    Image.new("1", (10_000, 10_000)).save(path, "PNG")


BAD_FILES = {
    "unreadable": (
        "cat/bad.png",
        lambda p: p.write_bytes(b"this is not an image"),
        "cannot identify image file",
    ),
    "truncated": ("cat/cut.png", _truncated, "truncated"),
    "bomb": ("cat/huge.png", _bomb, "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_named_with_the_fix_or_skipped(tmp_path: Path, case: str) -> None:
    rel, make, words = BAD_FILES[case]
    make_flat(tmp_path / "data", per_class=5)
    make(tmp_path / "data" / rel)
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 1, res.output
    assert str(tmp_path / "data" / rel) in res.output
    assert words in res.output.lower() or words in res.output
    assert "skip_bad_files" in res.output and "Traceback" not in res.output
    res = run_cli(tmp_path, tmp_path / "data", "skip_bad_files: true", "--progress", "plain")
    assert res.exit_code == 0, res.output
    assert "1 unreadable file(s) skipped" in res.output


def test_empty_class_folder(tmp_path: Path) -> None:
    make_flat(tmp_path / "data", per_class=3)
    (tmp_path / "data/empty").mkdir()
    (tmp_path / "data/empty/notes.txt").write_text("no pictures here")
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "without images" in res.output and str(tmp_path / "data/empty") in res.output
    assert "Add images or remove these folders" in res.output


def test_every_problem_of_a_folder_is_reported_in_one_run(tmp_path: Path) -> None:
    """An empty class folder and a corrupt file: both named by the first run, not one per run."""
    make_flat(tmp_path / "data", per_class=3)
    (tmp_path / "data/empty").mkdir()
    (tmp_path / "data/cat/bad.png").write_bytes(b"this is not an image")
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 1 and "Traceback" not in res.output
    out = " ".join(res.output.split())  # the console wraps long lines
    assert f"2 problems in image folder {tmp_path / 'data'}" in out
    assert "without images" in out and str(tmp_path / "data/empty") in out
    assert str(tmp_path / "data/cat/bad.png") in out and "cannot identify image file" in out
    # The fix for the bad file, for a recipe and for the command line.
    assert "set `data.skip_bad_files: true` in the recipe (or --set data.skip_bad_files=true)" in out


def test_cache_command_lists_and_clears_every_folder_written_under_the_cache(tmp_path: Path) -> None:
    make_flat(tmp_path / "data", per_class=3)
    assert run_cli(tmp_path, tmp_path / "data").exit_code == 0
    cache = Path(os.environ["MNISTKIT_CACHE"])
    written = {p.name for p in cache.iterdir()}
    assert written  # the decoded images
    res = CliRunner().invoke(app, ["cache"])
    assert res.exit_code == 0, res.output
    listed = {line.split()[0]: line for line in res.output.splitlines()[1:]}
    assert written <= set(listed), res.output
    for name in written:
        assert not re.search(r"\b0 files", listed[name]), listed[name]
    res = CliRunner().invoke(app, ["cache", "clear"])
    assert res.exit_code == 0, res.output
    assert not any(cache.iterdir()), sorted(cache.rglob("*"))  # no download was made: all cleared


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/readme.txt").write_text("hello")
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"No class folders in {tmp_path / 'data'}" in res.output and "<class name>" in res.output
    res = run_cli(tmp_path, tmp_path / "missing")
    assert res.exit_code == 1 and "no image folder found" in res.output and "--data-dir" in res.output


def test_class_in_train_but_not_in_test(tmp_path: Path) -> None:
    make_split(tmp_path / "data")
    write_image(tmp_path / "data/train/dog/0.png", 7)
    res = run_cli(tmp_path, tmp_path / "data")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(tmp_path / "data/train/dog") in res.output
    assert "Add test images" in res.output


def test_loader_error_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope")


def test_tiff_files_are_read(tmp_path: Path) -> None:
    """image_folder's description names TIFF: it reads .tif and .tiff files."""
    for ci, c in enumerate(CLASSES):
        for i, ext in enumerate(("tif", "tiff")):
            write_image(tmp_path / "data" / c / f"{i}.{ext}", 10 * ci + i, fmt="TIFF")
    data = load(tmp_path / "data")
    assert len(data.files) == 6 and {f.suffix for f in data.files} == {".tif", ".tiff"}
    for f in data.files:
        i = data.files.index(f)
        split, j = (data.train, i) if i < len(data.train.y) else (data.test, i - len(data.train.y))
        assert np.array_equal(split.x[j].numpy(), expected(f, 1)), f


def test_validate_says_which_class_count_its_parameter_count_assumes() -> None:
    """`validate recipes/image-folder.yaml` stated a count for 2 classes without saying so."""
    from mnistkit.build.components import build_model
    from mnistkit.recipe.schema import load_recipe

    path = Path(__file__).resolve().parents[1] / "recipes" / "image-folder.yaml"
    res = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    recipe, reg = load_recipe(path), registries()
    shape = input_shape(recipe, reg)
    counts = [
        sum(p.numel() for p in build_model(recipe, shape, n, reg)[0].parameters()) for n in (2, 3)
    ]  # torch's own count of the built model
    said = " ".join(res.output.split())
    assert f"{counts[0]:,} parameters" in said and "counted for 2 classes" in said, said
    assert f"+{counts[1] - counts[0]:,} per further class" in said, said


def test_worst_samples_of_an_image_folder_are_named_in_the_plot_and_listed_in_a_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """worst.png did not name the files, so a mislabelled photo could not be found."""
    import csv
    import json

    from mnistkit.evaluation import plots

    titles: list[str] = []
    save = plots._save

    def keep_titles(fig: Any, path: Path) -> Path:
        if Path(path).name == "worst.png":
            titles.extend(ax.get_title() for ax in fig.axes)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_titles)
    make_flat(tmp_path / "data", per_class=8)  # random pixels: many confident mistakes
    res = run_cli(tmp_path, tmp_path / "data", "", "--set", "train.plots=true")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "run/plots/worst.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "no mistakes listed"
    for row in rows:
        file = Path(row["file"])
        assert file.is_file() and file.parent.parent == tmp_path / "data", row
        assert row["true"] == file.parent.name != row["predicted"], row  # the folder is the label
        assert any(f"{file.parent.name}/{file.name}" in t for t in titles), (row, titles)
    # What predict says of these files is what the list says the run's model said.
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "--checkpoint", "last", "--json"]
                             + [r["file"] for r in rows])  # fmt: skip
    assert res.exit_code == 0, res.output
    for row, p in zip(rows, json.loads(res.output)["predictions"], strict=True):
        assert p["class"] == row["predicted"], (row, p)
