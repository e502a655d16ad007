"""`mnistkit eval`, `mnistkit predict` and the end-of-run plots (issue 5).

* Fashion-MNIST (real data, skipped without it): a quick run, eval reproduces the run's own test
  metrics, and a test image rendered to PNG is predicted as its label with the probability the
  model gives the prepared test tensor (so predict's preprocessing is exactly training's).
* digits (always available): plots, data.json, predict's options and error messages.
* a tiny synthetic audio folder: predict on WAV files through the same log-mel features.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import invoke, real_dataset, train
from PIL import Image
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.runs.directory import RunDir


def assert_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size


def predict_json(*args: Any) -> dict[str, Any]:
    res = CliRunner().invoke(app, ["predict", *map(str, args), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# ------------------------------------------------------------------------------ Fashion-MNIST
FASHION = """\
name: fashion-quick
data: {dataset: fashion_mnist, limit: 5000, test_limit: 1000, batch_size: 64}
model: {hidden: [128]}
optimizer: {name: adam, lr: 0.002}
epochs: 2
train: {progress: none, threads: 1}
"""


@pytest.fixture(scope="module")
def fashion_dir(shared_data: Path) -> Path:
    return real_dataset(shared_data, "fashion-mnist")


@pytest.fixture(scope="module")
def fashion_run(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("fashion"), FASHION, data_dir=fashion_dir)


def test_fashion_run_writes_plots(fashion_run: Path) -> None:
    for name in ("curves.png", "confusion.png", "worst.png"):
        assert_png(fashion_run / "plots" / name)
    info = RunDir(fashion_run).read_data_info()
    assert info is not None and info["classes"][0] == "T-shirt/top" and info["in_shape"] == [1, 28, 28]


def test_eval_reproduces_the_runs_test_metrics(fashion_run: Path, fashion_dir: Path) -> None:
    other = fashion_run.parent / "other-run"
    other.mkdir()
    (other / "eval-last.json").write_text("not mine")
    res = invoke("eval", fashion_run, "--checkpoint", "last", "--data-dir", fashion_dir)
    assert res.exit_code == 0, res.output
    for text in ("accuracy", "per class", "confusion matrix", "Ankle boot", "eval-last.json"):
        assert text in res.output
    report = json.loads((fashion_run / "eval-last.json").read_text())
    last = RunDir(fashion_run).read_metrics()[-1]
    assert report["samples"] == 1000
    assert report["accuracy"] == last["test_acc"]
    assert report["loss"] == pytest.approx(
        last["test_loss"], rel=1e-6
    )  # same batches; float rounding may differ
    assert report["checkpoint_epoch"] == 2 and report["checkpoint_when"] == "after epoch 2"
    cm = np.asarray(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert [c["support"] for c in report["classes"]] == cm.sum(axis=1).tolist()
    assert_png(fashion_run / "eval-last-confusion.png")
    assert (other / "eval-last.json").read_text() == "not mine"  # other runs are never touched

    res = invoke("eval", fashion_run, "--data-dir", fashion_dir)  # best
    assert res.exit_code == 0, res.output
    assert (fashion_run / "eval-best.json").is_file()
    assert (fashion_run / "eval-last.json").is_file()


def test_predict_png_of_a_test_image_returns_its_label(
    fashion_run: Path, fashion_dir: Path, tmp_path: Path
) -> None:
    from mnistkit.data.loading import load_data
    from mnistkit.data.vision import load_mnist_family
    from mnistkit.evaluation.predict import load_predictor
    from mnistkit.registry import registries
    from mnistkit.training.evaluation import evaluate

    # What the model says about the prepared (training-pipeline) test tensors.
    predictor = load_predictor(fashion_run, "best")
    data = load_data(RunDir(fashion_run).load_recipe(), registries(), fashion_dir, torch.device("cpu"))
    probs = evaluate(predictor.model, data.test, 1000, keep_probs=True).probs
    labels = data.test.y.numpy()
    correct = np.flatnonzero(probs.argmax(1) == labels)[:4]
    assert len(correct) == 4

    raw = load_mnist_family("fashion_mnist", [fashion_dir], None).test
    files = []
    for i in correct:
        path = tmp_path / f"test-{i}.png"
        Image.fromarray(raw.x[i, 0].numpy()).save(path)  # 28x28 grey, white on black
        files.append(path)
    result = predict_json(fashion_run, *files)
    for i, pred in zip(correct, result["predictions"], strict=True):
        assert pred["index"] == labels[i]
        assert pred["class"] == data.classes[labels[i]]
        assert pred["probability"] == pytest.approx(float(probs[i, labels[i]]), abs=1e-5)


# ------------------------------------------------------------------------------ digits
DIGITS = """\
name: digits-quick
data: {dataset: digits, batch_size: 64}
model: {hidden: [64]}
optimizer: {name: adam, lr: 0.005}
epochs: 2
train: {progress: none, threads: 1}
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("digits"), DIGITS)


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    from mnistkit.data.vision import load_sklearn_digits

    test = load_sklearn_digits().test
    out = tmp_path_factory.mktemp("pngs")
    files = []
    for i in range(6):
        path = out / f"digit-{i}.png"
        Image.fromarray(test.x[i, 0].numpy()).save(path)
        files.append((path, int(test.y[i])))
    return files


def test_every_run_writes_plots_and_data_json(digits_run: Path) -> None:
    for name in ("curves.png", "confusion.png", "worst.png"):
        assert_png(digits_run / "plots" / name)
    info = RunDir(digits_run).read_data_info()
    assert info is not None
    assert info["kind"] == "image" and info["in_shape"] == [1, 8, 8]
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["scale"] == pytest.approx(1 / 255)
    assert 0 < info["mean"][0] < 1 and 0 < info["std"][0] < 1


def test_predict_matches_the_model_on_prepared_test_data(
    digits_run: Path, digits_pngs: list[tuple[Path, int]]
) -> None:
    from mnistkit.data.loading import load_data
    from mnistkit.evaluation.predict import load_predictor
    from mnistkit.registry import registries
    from mnistkit.training.evaluation import evaluate

    predictor = load_predictor(digits_run, "last")
    data = load_data(RunDir(digits_run).load_recipe(), registries(), None, torch.device("cpu"))
    probs = evaluate(predictor.model, data.test, 1000, keep_probs=True).probs
    result = predict_json(digits_run, *[p for p, _ in digits_pngs], "--checkpoint", "last", "--top", "3")
    assert result["checkpoint"] == "last" and result["dataset"] == "digits"
    for i, pred in enumerate(result["predictions"]):
        assert pred["index"] == int(probs[i].argmax())
        assert pred["probability"] == pytest.approx(float(probs[i].max()), abs=1e-5)
        top = pred["top"]
        assert len(top) == 3 and top[0]["index"] == pred["index"]
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_predict_table_invert_resize_and_alpha(
    digits_run: Path, digits_pngs: list[tuple[Path, int]], tmp_path: Path
) -> None:
    src = digits_pngs[0][0]
    base = predict_json(digits_run, src)["predictions"][0]

    inverted = tmp_path / "inverted.png"
    Image.eval(Image.open(src), lambda v: 255 - v).save(inverted)
    again = predict_json(digits_run, inverted, "--invert")["predictions"][0]
    assert again["index"] == base["index"]
    assert again["probability"] == pytest.approx(base["probability"], abs=1e-6)
    res = invoke("predict", digits_run, inverted)  # without --invert: a hint, still exit 0
    assert res.exit_code == 0 and "--invert" in res.output

    big = tmp_path / "big.jpg"  # RGB JPEG, 10x larger: converted to grey and resized to 8x8
    Image.open(src).convert("RGB").resize((80, 80), Image.Resampling.NEAREST).save(big)
    rgba = tmp_path / "alpha.png"  # transparent background: treated as black
    img = Image.open(src).convert("L")
    Image.merge("RGBA", (img, img, img, img)).save(rgba)
    res = invoke("predict", digits_run, big, rgba, "--top", "2")
    assert res.exit_code == 0, res.output
    assert "big.jpg" in res.output and "alpha.png" in res.output and "probability" in res.output


def test_predict_takes_folders_recursively_and_notes_inputs_far_from_training(
    digits_run: Path, digits_pngs: list[tuple[Path, int]], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for i, (src, _) in enumerate(digits_pngs[:3]):
        shutil.copy(src, (folder / "sub" if i else folder) / src.name)
    shutil.copy(digits_pngs[3][0], folder / ".hidden" / "x.png")  # hidden: skipped
    (folder / "notes.txt").write_text("not an image")  # not an image: skipped
    result = predict_json(digits_run, folder)
    files = [p["file"] for p in result["predictions"]]
    assert files == [
        str(folder / "digit-0.png"),
        str(folder / "sub" / "digit-1.png"),
        str(folder / "sub" / "digit-2.png"),
    ]
    one_by_one = predict_json(digits_run, *files)
    assert result["predictions"] == one_by_one["predictions"]
    assert all("note" not in p for p in result["predictions"])  # 8x8 grey, as trained

    src = digits_pngs[0][0]
    big = tmp_path / "mnist-size.png"  # a 28x28 image fed to the 8x8 digits model
    Image.open(src).resize((28, 28), Image.Resampling.NEAREST).save(big)
    colour = tmp_path / "colour.png"  # 8x8, but in colour: the model was trained on grey
    grey = Image.open(src).convert("L")
    Image.merge("RGB", (grey, Image.new("L", grey.size, 0), grey)).save(colour)
    res = invoke("predict", digits_run, big, colour, src)
    assert res.exit_code == 0, res.output
    notes = [n for n in res.output.replace("\n    ", " ").splitlines() if n.startswith("note ")]
    assert len(notes) == 2, res.output
    assert "mnist-size.png" in notes[0] and "28x28 image resized to the model's 8x8 (shrunk 3.5x)" in notes[0]
    assert "colour.png" in notes[1] and "converted to grey" in notes[1]

    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke("predict", digits_run, empty)
    assert res.exit_code == 1 and "no image files in this folder" in res.output


@pytest.mark.parametrize("columns", [80, 120])
def test_predict_never_breaks_a_file_name(
    digits_run: Path, digits_pngs: list[tuple[Path, int]], tmp_path: Path, columns: int
) -> None:
    """Long names, a folder name with a space, --top 3: every name whole on one line, every line
    that holds more than one word within the width; the notes wrap between words too."""
    folder = tmp_path / "scans from the office" / "handwritten-digits-batch-2026-12-02"
    folder.mkdir(parents=True)
    names = ["digit-seven-from-the-scanner-on-the-second-floor-0001.png", "x.png"]
    for name, (src, _) in zip(names, digits_pngs, strict=False):
        shutil.copy(src, folder / name)
    big = folder / "a-28x28-image-far-from-the-8x8-training-images.png"
    Image.open(digits_pngs[2][0]).resize((28, 28), Image.Resampling.NEAREST).save(big)
    res = CliRunner().invoke(
        app, ["predict", str(digits_run), str(folder), "--top", "3"], env={"COLUMNS": str(columns)}
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(len(line) <= columns for line in lines if " " in line.strip() and str(folder) not in line)
    for name in [*names, big.name]:
        assert any(name in line for line in lines), res.output  # whole, on one line
    assert any(str(folder) in line for line in lines), res.output  # the folder, named whole once
    note = " ".join(res.output.split()).split("note ", 1)[1]
    assert note.startswith(f"{big}: 28x28 image resized to the model's 8x8 (shrunk 3.5x)"), res.output


def test_predict_treats_transparent_pixels_as_the_black_background(
    digits_run: Path, digits_pngs: list[tuple[Path, int]], tmp_path: Path
) -> None:
    # A light digit drawn on a transparent canvas whose hidden colour is white (what drawing
    # programs export): only the alpha channel carries the digit. Ignoring transparency would
    # read an all-white image.
    src = digits_pngs[0][0]
    grey = Image.open(src).convert("L")
    white = Image.new("L", grey.size, 255)
    rgba = tmp_path / "alpha.png"
    Image.merge("RGBA", (white, white, white, grey)).save(rgba)
    la = tmp_path / "alpha-la.png"  # grey + alpha
    Image.merge("LA", (white, grey)).save(la)
    base = predict_json(digits_run, src, "--top", "10")["predictions"][0]
    for f in (rgba, la):
        got = predict_json(digits_run, f, "--top", "10")["predictions"][0]
        assert got["index"] == base["index"]
        want = {t["class"]: t["probability"] for t in base["top"]}
        assert {t["class"]: t["probability"] for t in got["top"]} == pytest.approx(want, abs=1e-4), f.name
    from mnistkit.evaluation.predict import image_tensor

    info = RunDir(digits_run).read_data_info()
    assert torch.allclose(image_tensor(rgba, info), image_tensor(src, info), atol=1e-2)


def test_predict_resizes_a_larger_image_to_the_runs_input_size(
    digits_run: Path, digits_pngs: list[tuple[Path, int]], tmp_path: Path
) -> None:
    from mnistkit.evaluation.predict import image_tensor

    info = RunDir(digits_run).read_data_info()
    agree = 0
    for src, _ in digits_pngs:
        small = np.asarray(Image.open(src).convert("L"))
        big = tmp_path / f"big-{src.name}"  # every pixel a 10x10 block
        Image.fromarray(small).resize((80, 80), Image.Resampling.NEAREST).save(big)
        x_small, x_big = image_tensor(src, info), image_tensor(big, info)
        assert x_big.shape == x_small.shape == (1, 1, 8, 8)
        # Back to the 8x8 digit, up to the blur of bilinear down-sampling.
        diff = (x_big - x_small).abs() * info["std"][0] * 255  # in grey levels
        assert float(diff.mean()) < 30, float(diff.mean())
        a = predict_json(digits_run, src)["predictions"][0]["index"]
        b = predict_json(digits_run, big)["predictions"][0]["index"]
        agree += a == b
    assert agree >= len(digits_pngs) - 1


def test_predict_names_every_unreadable_file(digits_run: Path, digits_pngs: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG but not really")
    wav = tmp_path / "sound.wav"
    wav.write_bytes(b"RIFF")
    res = invoke("predict", digits_run, digits_pngs[0][0], garbage, tmp_path / "missing.png", wav)
    assert res.exit_code == 1
    assert "cannot read 3 files" in res.output
    assert "garbage.png: cannot read it as an image" in res.output
    assert "missing.png: no such file" in res.output
    assert "sound.wav: this run was trained on images" in res.output
    assert "Traceback" not in res.output


def test_eval_and_predict_errors(digits_run: Path, tmp_path: Path) -> None:
    res = invoke("eval", tmp_path)
    assert res.exit_code == 1 and "not a run directory" in res.output
    bad = invoke("predict", digits_run, "x.png", "--checkpoint", "middle")
    assert bad.exit_code == 2  # usage error: only best or last
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "best.pt").unlink()
    res = invoke("eval", run)
    assert res.exit_code == 1
    assert "best.pt does not exist" in res.output and "--checkpoint last" in res.output


def test_eval_digits_report_and_table(digits_run: Path) -> None:
    res = invoke("eval", digits_run, "-c", "last")
    assert res.exit_code == 0, res.output
    report = json.loads((digits_run / "eval-last.json").read_text())
    last = RunDir(digits_run).read_metrics()[-1]
    assert report["accuracy"] == last["test_acc"]
    assert math.isclose(report["loss"], last["test_loss"], rel_tol=1e-6)
    macro_f1 = np.mean([c["f1"] for c in report["classes"]])
    assert report["macro"]["f1"] == pytest.approx(macro_f1)
    assert f"{report['accuracy']:.2%}" in res.output


# ------------------------------------------------------------------------------ audio
AUDIO = """\
name: tones
data:
  dataset: audio_folder
  root: {root}
  batch_size: 4
  test_fraction: 0.34
  features: {{n_fft: 256, hop_length: 64, n_mels: 16, frames: 16}}
model: {{hidden: [16]}}
optimizer: {{name: adam, lr: 0.01}}
epochs: 8
train: {{plots: false, progress: none, threads: 1}}
"""


def _tone(path: Path, freq: float, sr: int = 8000, seconds: float = 0.25) -> None:
    import soundfile as sf

    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def test_predict_wav_with_the_runs_log_mel_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "audio"
    for name, freq in (("high", 2000.0), ("low", 300.0)):
        (root / name).mkdir(parents=True)
        for k in range(6):  # identical clips: every clip of a class has the same features
            _tone(root / name / f"{k}.wav", freq)
    run = train(tmp_path, AUDIO.format(root=root))
    info = RunDir(run).read_data_info()
    assert info is not None and info["kind"] == "audio" and info["in_shape"] == [1, 16, 16]
    assert info["features"]["n_mels"] == 16

    from mnistkit.data.loading import load_data
    from mnistkit.evaluation.predict import load_predictor
    from mnistkit.registry import registries
    from mnistkit.training.evaluation import evaluate

    data = load_data(RunDir(run).load_recipe(), registries(), None, torch.device("cpu"))
    probs = evaluate(load_predictor(run, "best").model, data.test, 100, keep_probs=True).probs
    by_class = {int(y): probs[i] for i, y in enumerate(data.test.y)}

    result = predict_json(run, root / "high" / "0.wav", root / "low" / "5.wav", "--top", "2")
    for pred, cls in zip(result["predictions"], (0, 1), strict=True):  # classes: high, low
        assert pred["probability"] == pytest.approx(float(by_class[cls].max()), abs=1e-5)
        assert pred["top"][0]["index"] == int(by_class[cls].argmax())

    png = tmp_path / "x.png"
    Image.new("L", (16, 16)).save(png)
    res = invoke("predict", run, png)
    assert res.exit_code == 1 and "trained on audio" in res.output

    # A folder: its audio files, recursively; a clip far longer than the training frames gets a note.
    long_clip = tmp_path / "long.wav"
    _tone(long_clip, 300.0, seconds=1.0)  # 126 frames at hop 64; the model saw 16
    result = predict_json(run, root, long_clip)
    files = [p["file"] for p in result["predictions"]]
    assert files == sorted(str(f) for f in root.rglob("*.wav")) + [str(long_clip)]
    assert [p.get("note") for p in result["predictions"][:-1]] == [None] * 12
    assert (
        "1.00 s clip" in result["predictions"][-1]["note"]
        and "16 frames" in result["predictions"][-1]["note"]
    )


def test_dark_background_hint_follows_the_pixels_not_the_normalization() -> None:
    """With `normalize: none` the normalization mean is 0, which claimed every dataset was
    light-on-dark; the hint must follow the training pixels' own mean (data.json pixel_mean)."""
    from mnistkit.evaluation.inputs import _trained_dark

    none = {"mean": [0.0], "std": [1.0]}
    assert _trained_dark({**none, "pixel_mean": [0.13]})  # MNIST-like: white strokes on black
    assert not _trained_dark({**none, "pixel_mean": [0.86]})  # dark strokes on white paper
    assert not _trained_dark(none)  # an old run dir without pixel_mean: no guess
    assert _trained_dark({"mean": [0.1307], "std": [0.3081]})  # old run dir, normalize: auto


def test_data_json_records_the_pixel_mean_whatever_the_normalization(tmp_path: Path) -> None:
    run = train(tmp_path, DIGITS, "data.normalize=none", "epochs=1")
    info = json.loads((run / "data.json").read_text())
    assert info["mean"] == [0.0] and info["std"] == [1.0]
    assert 0.2 < info["pixel_mean"][0] < 0.4  # the 8x8 digits: light strokes on a dark background


def test_eval_reproduces_metrics_csv_for_a_bf16_run(tmp_path: Path) -> None:
    """`eval` runs the training loop's own evaluation, under the run's bf16 autocast (it ran in
    fp32 before, so its loss and accuracy differed from metrics.csv's)."""
    run = train(tmp_path, DIGITS, "train.precision=bf16", "epochs=1")
    res = invoke("eval", run, "-c", "last")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "eval-last.json").read_text())
    last = RunDir(run).read_metrics()[-1]
    assert report["accuracy"] == last["test_acc"]
    assert math.isclose(report["loss"], last["test_loss"], rel_tol=1e-6)
