"""The gallery section: the most confident mistakes and the least confident correct answers,
each with its picture (from gallery.npz), true and predicted class and the top probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.errors import RunError
from mnistkit.report.figures import picture_uri
from mnistkit.report.page import render_part
from mnistkit.runs.gallery import Gallery, load_gallery, pick

if TYPE_CHECKING:
    from markupsafe import Markup

    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.predictions import Predictions

TOP = 3  # probabilities shown per sample


def gallery_body(run: RunDir, pred: Predictions, classes: list[str], add_command: str) -> Markup:
    """The section's HTML; a message naming the command that writes gallery.npz where it is
    missing (the probabilities are still listed: they come from predictions.npz)."""
    gallery, problem = _gallery(run, add_command)
    if gallery is not None and not _matches(gallery, pred):
        gallery, problem = (
            None,
            (
                f"{run.GALLERY} does not belong to this {run.PREDICTIONS} (written by another "
                f"evaluation); `{add_command.format(run=run.path)}` writes both again"
            ),
        )
    mistakes, unsure = (
        (gallery.mistakes, gallery.unsure) if gallery is not None else pick(pred.probabilities, pred.labels)
    )
    groups = [
        ("mistakes", "Most confident mistakes", _cards(mistakes, pred, classes, gallery)),
        ("unsure", "Least confident correct answers", _cards(unsure, pred, classes, gallery)),
    ]
    return render_part("parts/gallery.html.j2", groups=groups, problem=problem)


def _gallery(run: RunDir, add_command: str) -> tuple[Gallery | None, str]:
    if not run.gallery_path.is_file():
        return None, (
            f"No pictures: this run has no {run.GALLERY} (made before mnistkit saved the inputs "
            f"a report shows). `{add_command.format(run=run.path)}` writes it."
        )
    try:
        return load_gallery(run.gallery_path), ""
    except RunError as exc:
        return None, str(exc)


def _matches(gallery: Gallery, pred: Predictions) -> bool:
    """Whether the gallery was picked from these predictions (the same samples, the same order)."""
    mistakes, unsure = pick(pred.probabilities, pred.labels)
    return np.array_equal(mistakes, gallery.mistakes) and np.array_equal(unsure, gallery.unsure)


def _cards(
    indices: np.ndarray, pred: Predictions, classes: list[str], gallery: Gallery | None
) -> list[dict[str, Any]]:
    cards = []
    for i in (int(k) for k in indices):
        probs = pred.probabilities[i]
        top = np.argsort(-probs, kind="stable")[:TOP]
        cards.append(
            {
                "index": i,
                "true": classes[int(pred.labels[i])],
                "predicted": classes[int(pred.predicted[i])],
                "confidence": float(probs[pred.predicted[i]]),
                "top": [(classes[int(c)], float(probs[c])) for c in top],
                "uri": picture_uri(gallery.input_of(i), gallery.spectrogram) if gallery else None,
                "name": gallery.name_of(i) if gallery else "",
            }
        )
    return cards
