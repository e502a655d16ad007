"""PNG plots of a run: learning curves, confusion matrix, most confidently wrong examples.

matplotlib is imported inside the functions (the CLI does not pay for it at start-up), and the
figures are built with ``matplotlib.figure.Figure`` rather than pyplot: a Figure made that way
renders through the Agg canvas when saved, needs no display, and never touches the process-wide
pyplot backend or figure registry (so nothing leaks and an interactive session calling these
functions keeps its own backend). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.fsutil import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110

# Okabe & Ito's colour-blind-safe palette (https://jfly.uni-koeln.de/color/): distinguishable
# with every common colour-vision deficiency, unlike matplotlib's default tab10.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}

# One colour per split, the same in every panel.
SPLITS = (("train", OKABE_ITO["blue"]), ("val", OKABE_ITO["bluish green"]), ("test", OKABE_ITO["orange"]))
_SPLITS = SPLITS


def new_figure(width: float, height: float) -> Figure:
    """A Figure with constrained layout that never touches pyplot (see the module's doc)."""
    return _figure(width, height)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    try:
        # Atomic like every file a run leaves: a killed run never leaves a truncated PNG.
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    finally:
        fig.clear()  # drop artists now; the Figure is not in any pyplot registry to close
    return path


def _num(value: Any) -> float | None:
    """A metrics.csv cell as a float; None for missing ("", None, "None", nan)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() in ("none", "null", "nan"):
            return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metrics.csv column, the rows without a value left out."""
    return _series(rows, key)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = _num(row.get(key))
        if y is None:
            continue
        epoch = _num(row.get("epoch"))
        xs.append(epoch if epoch is not None else float(i + 1))
        ys.append(y)
    return xs, ys


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch for train / val / test, side by side.

    ``rows`` are metrics.csv rows (numbers or strings; None or "" where a column is absent).
    Accuracy is drawn in percent; values are taken as fractions unless some exceed 1.
    """
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = _figure(11, 4.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    accs = [y for split, _ in _SPLITS for y in _series(rows, f"{split}_acc")[1]]
    # Fractions (0..1) are the metrics.csv convention; a value above 1 means already percent.
    scale = 1.0 if accs and max(accs) > 1.0 else 100.0
    epochs = [x for split, _ in _SPLITS for m in ("loss", "acc") for x in _series(rows, f"{split}_{m}")[0]]

    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        drawn = False
        for split, colour in _SPLITS:
            xs, ys = _series(rows, f"{split}_{metric}")
            if not ys:
                continue
            drawn = True
            if metric == "acc":
                ys = [y * scale for y in ys]
                label = f"{split} {ys[-1]:.2f}%"
                if split != "train" and len(ys) > 1:  # best held-out accuracy is what matters
                    label += f" (best {max(ys):.2f}%)"
            else:
                label = f"{split} {ys[-1]:.4f}"
            ax.plot(xs, ys, marker="o", markersize=4, color=colour, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if metric == "loss" else "accuracy")
        ax.set_title("loss" if metric == "loss" else "accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            # Half an epoch of margin: with one or two epochs matplotlib would otherwise zoom
            # into a fractional range and label it 0.995, 1.000, 1.005...
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        if drawn:
            # Below the panel, not inside: a legend inside can hide points (one-epoch runs).
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(100.0, decimals=None))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> Path:
    """Heat map of a confusion matrix: rows true class, columns predicted, counts in cells.

    Colours are row-normalised (fraction of each true class), so rare classes are as visible as
    common ones; the numbers are the raw counts.
    """
    return _save(confusion_figure(cm, classes, title), path)


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "", normalized: bool = False) -> Figure:
    """The figure of :func:`plot_confusion`; ``normalized`` writes each cell's fraction of its
    true class (in percent) instead of the count."""
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} classes")
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)

    side = max(4.5, 0.42 * n + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("fraction of true class")

    digits = 3 if normalized else (len(str(int(cm.max()))) if cm.size else 1)
    # Fit the longest count in a cell: a cell is about 0.8 * side / n inches wide and a digit
    # about 0.6 em; never below 5 pt, never above 10 pt.
    cell_pt = 0.8 * side / max(n, 1) * 72
    fontsize = max(5.0, min(10.0, 0.8 * cell_pt / (0.6 * digits)))
    for i in range(n):
        for j in range(n):
            count = int(cm[i, j])
            if count == 0:
                colour = "0.75"  # zeros in light grey: the eye goes to the real mistakes
            else:
                colour = "white" if frac[i, j] > 0.5 else "black"
            text = f"{100 * frac[i, j]:.0f}" if normalized and count else str(count)
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)

    ax.set_xticks(range(n), [str(c) for c in classes])
    ax.set_yticks(range(n), [str(c) for c in classes])
    label_size = 10 if n <= 20 else 9
    ax.tick_params(axis="both", labelsize=label_size)
    for lab in ax.get_xticklabels():
        lab.set_rotation(45)
        lab.set_ha("right")
        lab.set_rotation_mode("anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(cm.sum())
    acc = float(np.trace(cm)) / total if total else 0.0
    what = " (cells: % of the true class)" if normalized else ""
    ax.set_title(f"{title + ' - ' if title else ''}accuracy {acc:.2%} of {total}{what}")
    return fig


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A [C, H, W] array as something imshow shows: min-max scaled to 0..1, and a colour map."""
    img = np.asarray(image, dtype=np.float64)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.shape[0] == 3:
        return img.transpose(1, 2, 0), None
    # One channel is grey; other channel counts have no natural colour: show their mean.
    return img.mean(axis=0), "gray"


def plot_worst(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
    classes: list[str],
    path: Path,
    title: str = "",
    *,
    spectrogram: bool | None = None,
    names: list[str] | None = None,
) -> Path:
    """A grid (up to 5 columns) of misclassified examples titled "true: X / pred: Y (97%)",
    with the sample's file name above when ``names`` gives one per image.

    ``images`` is ``[N, C, H, W]`` in any value range (each is min-max scaled for display);
    the caller has already chosen the N to show. ``confidence`` is the predicted class's
    probability (0..1). ``spectrogram`` draws audio features ``[N, 1, n_mels, frames]`` with
    the low frequencies at the bottom and stretched to fill the cell; None (default) guesses
    it: one channel and a non-square shape.
    """
    images = np.asarray(images)
    true, pred = np.asarray(true).reshape(-1), np.asarray(pred).reshape(-1)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {images.shape}")
    n = images.shape[0]
    if not (len(true) == len(pred) == len(confidence) == n) or (names is not None and len(names) != n):
        raise ValueError(f"{n} images but {len(true)} true, {len(pred)} pred, {len(confidence)} confidence")
    if spectrogram is None:
        spectrogram = images.shape[1] == 1 and images.shape[2] != images.shape[3]

    if n == 0:
        fig = _figure(4, 1.5)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes to show", ha="center", va="center")
        if title:
            fig.suptitle(title)
        return _save(fig, path)

    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    cell_w, cell_h = (2.8, 2.4) if spectrogram else (2.1, 2.5)
    if names is not None:
        cell_w, cell_h = cell_w + 0.5, cell_h + 0.25  # room for a file name line
    fig = _figure(ncols * cell_w, nrows * cell_h + (0.4 if title else 0.0))
    axes: list[Axes] = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for k, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        img, cmap = _display(images[k])
        if spectrogram:
            ax.imshow(img, cmap="magma", origin="lower", aspect="auto", interpolation="nearest")
        else:
            ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        conf = float(np.clip(confidence[k], 0.0, 1.0))
        label = f"true: {_name(classes, true[k])}\npred: {_name(classes, pred[k])} ({conf:.0%})"
        ax.set_title(label if names is None else f"{names[k]}\n{label}", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _name(classes: list[str], index: Any) -> str:
    i = int(index)
    return str(classes[i]) if 0 <= i < len(classes) else str(i)
