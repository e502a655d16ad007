"""``gallery.npz``: the few test inputs a report shows, so that ``mnistkit report`` works from the
run directory alone, without the dataset files.

Written beside ``predictions.npz``, by the same writers (the end of a finished run, and ``mnistkit
eval RUN_DIR --checkpoint last``), from the same probabilities: the most confident mistakes and
the least confident correct answers (:func:`pick`). Arrays: ``mistakes`` and ``unsure`` (test-set
indices, in the order shown), ``inputs`` (float16 ``[K, C, H, W]``, the inputs of
``mistakes`` then ``unsure``, as they were before normalization: pixels in 0..1, or log-mel
features), ``spectrogram`` (whether to draw them as log-mel pictures), and ``names`` (a JSON list
of the samples' file names, empty strings for datasets without files). Numpy only.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_path

FILE = "gallery.npz"
SHOWN = 12  # of each kind


@dataclass
class Gallery:
    mistakes: np.ndarray  # [k] test indices
    unsure: np.ndarray  # [m] test indices
    inputs: np.ndarray  # [k + m, C, H, W]
    spectrogram: bool
    names: list[str]

    def input_of(self, index: int) -> np.ndarray:
        """The stored input of test sample ``index``."""
        order = np.concatenate([self.mistakes, self.unsure])
        where = np.flatnonzero(order == index)
        if not len(where):
            raise KeyError(index)
        return self.inputs[int(where[0])]

    def name_of(self, index: int) -> str:
        order = list(np.concatenate([self.mistakes, self.unsure]))
        k = order.index(index)
        return self.names[k] if k < len(self.names) else ""


def pick(probabilities: np.ndarray, labels: np.ndarray, k: int = SHOWN) -> tuple[np.ndarray, np.ndarray]:
    """(the k wrong predictions made with the highest confidence, the k right ones made with the
    lowest), confidence being the predicted class's probability; ties in test-set order."""
    probs = np.asarray(probabilities)
    labels = np.asarray(labels).reshape(-1)
    pred = probs.argmax(1)
    conf = probs[np.arange(len(pred)), pred]
    wrong = np.flatnonzero(pred != labels)
    right = np.flatnonzero(pred == labels)
    mistakes = wrong[np.argsort(-conf[wrong], kind="stable")[:k]]
    unsure = right[np.argsort(conf[right], kind="stable")[:k]]
    return mistakes.astype(np.int64), unsure.astype(np.int64)


def save_gallery(
    path: Path,
    mistakes: np.ndarray,
    unsure: np.ndarray,
    inputs: np.ndarray,
    spectrogram: bool,
    names: list[str] | None = None,
) -> Path:
    """Write ``gallery.npz`` atomically (compressed); ``inputs`` are those of ``mistakes`` then
    ``unsure``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            mistakes=np.asarray(mistakes, dtype=np.int64),
            unsure=np.asarray(unsure, dtype=np.int64),
            inputs=np.asarray(inputs, dtype=np.float16),
            spectrogram=np.bool_(spectrogram),
            names=np.array(json.dumps(list(names or []))),
        )
    return path


def load_gallery(path: Path) -> Gallery:
    try:
        with np.load(path, allow_pickle=False) as f:
            gallery = Gallery(
                mistakes=f["mistakes"].astype(np.int64),
                unsure=f["unsure"].astype(np.int64),
                inputs=f["inputs"].astype(np.float32),
                spectrogram=bool(f["spectrogram"]),
                names=[str(n) for n in json.loads(str(f["names"]))],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise RunError(
            f"{path}: damaged, or not a gallery file written by mnistkit; write it again "
            f"with `mnistkit eval {path.parent} --checkpoint last`"
        ) from None
    if len(gallery.inputs) != len(gallery.mistakes) + len(gallery.unsure):
        raise RunError(f"{path}: its arrays differ in length: the file is damaged")
    return gallery
