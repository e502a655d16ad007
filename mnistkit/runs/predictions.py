"""``predictions.npz``: a run's test-set predictions, what ``mnistkit compare`` tests differences on.

Written at the end of every finished run (rank 0 under ``--nproc``) for the run's *final* model,
the weights after its last epoch (``last.pt`` of a finished run; the ``final`` line of the run's
summary and the last row of metrics.csv): not ``best.pt``, which a run without
``data.val_split`` selects on the test set itself, so a test on the same test set would favour
it. ``mnistkit eval RUN_DIR --checkpoint last`` writes the same file for a run made before
predictions were saved.

Arrays: ``labels`` (true class), ``predicted`` (argmax class), ``probabilities`` (float32,
``[N, classes]``), and two JSON strings: ``test_set`` (which test samples, in which order: see
:func:`test_set_identity`) and ``model`` (which weights: checkpoint, epoch). Numpy only: ``compare``
reads it without torch.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_path

FORMAT = 1


@dataclass
class Predictions:
    labels: np.ndarray  # [N] int
    predicted: np.ndarray  # [N] int
    probabilities: np.ndarray  # [N, C] float32
    test_set: dict[str, Any]  # test_set_identity()
    model: dict[str, Any]  # {"checkpoint": "last.pt", "epoch": 15, "step": 0, "written_by": ...}

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.labels) else 0.0


def test_set_identity(dataset: str, labels: np.ndarray, inputs_sha256: str) -> dict[str, Any]:
    """Which test samples a run predicted, in which order.

    The digests of the inputs *as stored* (before normalization: two runs whose training data,
    hence normalization, differ still name the same test set) and of the labels, with the size.
    Not the dataset file hashes of env.json: they cover the training files and the files' paths
    too, so the same test set read from another folder would look different.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    return {
        "dataset": dataset,
        "samples": int(len(labels)),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "inputs_sha256": inputs_sha256,
    }


def save_predictions(
    path: Path, labels: np.ndarray, probs: np.ndarray, test_set: dict[str, Any], model: dict[str, Any]
) -> Path:
    """Write ``predictions.npz`` atomically (compressed)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float32)
    small = np.int16 if probs.shape[1] <= np.iinfo(np.int16).max else np.int32
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez_compressed(
            fh,
            format=np.int32(FORMAT),
            labels=labels.astype(small),
            predicted=probs.argmax(1).astype(small),
            probabilities=probs,
            test_set=np.array(json.dumps(test_set)),
            model=np.array(json.dumps(model)),
        )
    return path


def load_predictions(path: Path) -> Predictions:
    """Read ``predictions.npz``; a RunError naming the file for anything else."""
    try:
        with np.load(path, allow_pickle=False) as f:
            fmt = int(f["format"])
            if fmt > FORMAT:
                raise RunError(f"{path}: format {fmt} was written by a newer mnistkit: upgrade mnistkit")
            pred = Predictions(
                labels=f["labels"].astype(np.int64),
                predicted=f["predicted"].astype(np.int64),
                probabilities=f["probabilities"],
                test_set=json.loads(str(f["test_set"])),
                model=json.loads(str(f["model"])),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # not an npz, a key missing
        raise RunError(
            f"{path}: damaged, or not a predictions file written by mnistkit; write it again "
            f"with `mnistkit eval {path.parent} --checkpoint last`"
        ) from None
    if not (len(pred.labels) == len(pred.predicted) == len(pred.probabilities)):
        raise RunError(f"{path}: its arrays differ in length: the file is damaged")
    return pred


def test_set_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """None when two runs predicted the same test samples in the same order, else why not."""
    if a.get("dataset") != b.get("dataset"):
        return f"different datasets ({a.get('dataset')} vs {b.get('dataset')})"
    if a.get("samples") != b.get("samples"):
        return f"different sizes ({a.get('samples'):,} vs {b.get('samples'):,} samples; data.test_limit?)"
    if a.get("labels_sha256") != b.get("labels_sha256"):
        return "the same size, but different labels (other samples, or another order)"
    if a.get("inputs_sha256") != b.get("inputs_sha256"):
        return "the same labels, but different inputs (other files, or other audio features)"
    return None
