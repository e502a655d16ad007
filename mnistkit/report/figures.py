"""Figures of a report as ``data:`` URIs: matplotlib figures as PNG, small pictures as PNG.

Built on :mod:`mnistkit.evaluation.plots` (its figure helpers, its Okabe-Ito colours): one look
for the PNGs a run writes and the report. Every plot has axis labels with units.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.evaluation.plots import OKABE_ITO, SPLITS, new_figure, series

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig: Figure) -> str:
    """The figure as a PNG ``data:`` URI (Agg canvas; the figure is cleared afterwards)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        fig.clear()
    return png_uri(buf.getvalue())


def curves_uri(rows: list[dict[str, Any]], best_epoch: int | None, best_metric: str | None) -> str:
    """Loss, accuracy (%) and learning rate per epoch, train/val/test; the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    has_lr = bool(series(rows, "lr")[1])
    fig = new_figure(12, 3.8)
    axes = fig.subplots(1, 3 if has_lr else 2)
    for ax, metric, ylabel in ((axes[0], "loss", "loss (per sample)"), (axes[1], "acc", "accuracy (%)")):
        for split, colour in SPLITS:
            xs, ys = series(rows, f"{split}_{metric}")
            if not ys:
                continue
            ys = [100 * y for y in ys] if metric == "acc" else ys
            style = "--" if split == "train" else "-"
            ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=split)
        ax.set_ylabel(ylabel)
        ax.set_title("accuracy" if metric == "acc" else "loss")
    if has_lr:
        xs, ys = series(rows, "lr")
        axes[2].plot(xs, ys, marker="o", markersize=3, color=OKABE_ITO["reddish purple"], label="lr")
        axes[2].set_ylabel("learning rate (at epoch end)")
        axes[2].set_title("learning rate")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(
                best_epoch,
                color=OKABE_ITO["black"],
                linestyle=":",
                linewidth=1.2,
                label=f"best epoch {best_epoch}" + (f" ({best_metric})" if best_metric else ""),
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure_uri(fig)


def confusion_uri(cm: np.ndarray, classes: list[str], normalized: bool) -> str:
    from mnistkit.evaluation.plots import confusion_figure

    title = "row-normalized" if normalized else "counts"
    return figure_uri(confusion_figure(cm, classes, title=title, normalized=normalized))


def reliability_uri(bins: Any) -> str:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the count
    of predictions per bin below (``bins``: :class:`mnistkit.report.calibration.Reliability`)."""
    fig = new_figure(5.5, 5.5)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins.edges[1:] - bins.edges[:-1]
    filled = bins.counts > 0
    top.bar(
        100 * bins.edges[:-1][filled],
        100 * bins.accuracy[filled],
        width=100 * width[filled],
        align="edge",
        color=OKABE_ITO["blue"],
        edgecolor="white",
        label="accuracy in bin",
    )
    top.plot(
        [0, 100], [0, 100], color=OKABE_ITO["black"], linestyle="--", linewidth=1, label="perfect calibration"
    )
    top.scatter(
        100 * bins.confidence[filled],
        100 * bins.accuracy[filled],
        color=OKABE_ITO["vermillion"],
        s=14,
        zorder=3,
        label="mean confidence in bin",
    )
    top.set_ylabel("accuracy (%)")
    top.set_ylim(0, 100)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"reliability, {len(bins.counts)} equal-width bins: ECE {100 * bins.ece:.2f} %")
    bottom.bar(
        bins.edges[:-1] * 100,
        bins.counts,
        width=width * 100,
        align="edge",
        color=OKABE_ITO["sky blue"],
        edgecolor="white",
    )
    bottom.set_yscale("log" if bins.counts.max(initial=0) > 0 else "linear")
    bottom.set_ylabel("predictions")
    bottom.set_xlabel("confidence: probability of the predicted class (%)")
    bottom.set_xlim(0, 100)
    top.set_xlim(0, 100)
    return figure_uri(fig)


def picture_uri(sample: np.ndarray, spectrogram: bool, scale: int = 4) -> str:
    """One input ``[C, H, W]`` as a small PNG: grey (or RGB) for images, the magma colour map
    with low frequencies at the bottom for log-mel features; each pixel ``scale`` times larger
    for small inputs."""
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(sample, dtype=np.float64)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if spectrogram:
        rgb = colormaps["magma"](img.mean(axis=0)[::-1])[..., :3]
        pic = Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
    elif img.shape[0] == 3:
        pic = Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8), "RGB")
    else:
        pic = Image.fromarray((img.mean(axis=0) * 255).astype(np.uint8), "L")
    factor = max(1, min(scale, 128 // max(pic.size)))
    if factor > 1:
        pic = pic.resize((pic.width * factor, pic.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return png_uri(buf.getvalue())
