"""Tests for mnistkit.evaluation.plots: each function writes a real PNG for small synthetic inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mnistkit.evaluation import plots

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, min_w: int = 200, min_h: int = 100) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: catches truncated output
        w, h = im.size
        # Not a blank canvas: some pixels differ from the background.
        extrema = im.convert("L").getextrema()
    assert w >= min_w and h >= min_h, (w, h)
    assert extrema[0] < extrema[1]
    return w, h


def _rows(n: int, val: bool = True, as_csv: bool = False) -> list[dict[str, Any]]:
    rows = []
    for e in range(1, n + 1):
        row: dict[str, Any] = {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_acc": 1 - 0.5 / e,
            "test_loss": 1.1 / e,
            "test_acc": 1 - 0.6 / e,
            "lr": 0.1,
        }
        if val:
            row.update(val_loss=1.05 / e, val_acc=1 - 0.55 / e)
        if as_csv:  # csv.DictReader gives strings, "" where a column is empty
            row = {k: str(v) for k, v in row.items()}
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(_rows(5), id="with-val"),
        pytest.param(_rows(4, val=False), id="no-val-columns"),
        pytest.param(_rows(1), id="one-epoch"),
        pytest.param(_rows(1, val=False, as_csv=True), id="one-epoch-csv-strings"),
        pytest.param(
            [{**r, "val_loss": "", "val_acc": None} for r in _rows(3, as_csv=True)],
            id="empty-val-cells",
        ),
        pytest.param([], id="no-rows"),
    ],
)
def test_plot_curves_writes_png(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    out = plots.plot_curves(rows, tmp_path / "sub" / "curves.png", title="run")
    assert out == tmp_path / "sub" / "curves.png"
    w, h = _png(out, 600, 250)
    assert w > h  # two panels side by side


def test_curve_helpers_read_csv_cells() -> None:
    assert plots._num("") is None and plots._num(None) is None and plots._num("nan") is None
    assert plots._num("0.25") == 0.25 and plots._num(3) == 3.0
    xs, ys = plots._series([{"epoch": "1", "val_acc": ""}, {"epoch": "2", "val_acc": "0.5"}], "val_acc")
    assert xs == [2.0] and ys == [0.5]


@pytest.mark.parametrize("n", [2, 10, 35])
def test_plot_confusion_writes_png(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    cm = rng.integers(0, 50, size=(n, n)) + np.diag(rng.integers(100, 5000, size=n))
    cm[0] = 0  # a class with no examples: row normalisation must not divide by zero
    classes = [f"class-{i}" for i in range(n)]
    _png(plots.plot_confusion(cm, classes, tmp_path / "cm.png", title="t"), 300, 300)


def test_plot_confusion_checks_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match 3 classes"):
        plots.plot_confusion(np.eye(2, dtype=int), ["a", "b", "c"], tmp_path / "cm.png")


@pytest.mark.parametrize(
    ("shape", "n_show"),
    [
        pytest.param((1, 28, 28), 7, id="grey"),
        pytest.param((3, 32, 32), 3, id="rgb"),
        pytest.param((1, 40, 101), 6, id="audio-features"),
        pytest.param((1, 8, 8), 1, id="single"),
    ],
)
def test_plot_worst_writes_png(tmp_path: Path, shape: tuple[int, ...], n_show: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(loc=3.0, scale=10.0, size=(n_show, *shape)).astype(np.float32)
    images[0] = 7.0  # a constant image must not divide by zero
    true = np.arange(n_show) % 10
    pred = (true + 1) % 10
    conf = rng.uniform(0.5, 1.0, size=n_show)
    classes = [str(i) for i in range(10)]
    out = plots.plot_worst(images, true, pred, conf, classes, tmp_path / "worst.png", "worst")
    _png(out, 100, 100)


def test_plot_worst_with_no_mistakes(tmp_path: Path) -> None:
    empty = np.zeros((0, 1, 28, 28), dtype=np.float32)
    _png(plots.plot_worst(empty, [], [], [], ["a"], tmp_path / "w.png"), 100, 50)


def test_plot_worst_checks_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 images but 1 true"):
        plots.plot_worst(np.zeros((2, 1, 4, 4)), [0], [1, 1], [0.9, 0.9], ["a", "b"], tmp_path / "w")


def test_importing_plots_does_not_import_matplotlib_or_change_backend() -> None:
    code = (
        "import sys, mnistkit.evaluation.plots; assert 'matplotlib' not in sys.modules; "
        "import matplotlib; matplotlib.use('svg'); "
        "from pathlib import Path; import tempfile; "
        "mnistkit.evaluation.plots.plot_curves([], Path(tempfile.mkdtemp()) / 'c.png'); "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
