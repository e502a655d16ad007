"""Calibration of a classifier's probabilities: reliability bins and the expected calibration
error (ECE), numpy only.

Confidence is the probability of the predicted class. The ``[0, 1]`` range is cut into ``bins``
equal-width bins, ``(lo, hi]`` each (the first also holds 0); ECE is the mean, weighted by the
number of predictions in each bin, of ``|accuracy - mean confidence|`` in the bin (Guo et al.
2017, "On Calibration of Modern Neural Networks", eq. 3), as a fraction (0 = calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15  # Guo et al.'s choice; stated on the page with the value


@dataclass
class Reliability:
    edges: np.ndarray  # [bins + 1], 0..1
    counts: np.ndarray  # [bins] predictions per bin
    accuracy: np.ndarray  # [bins] fraction correct (0 where empty)
    confidence: np.ndarray  # [bins] mean confidence (0 where empty)
    ece: float


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """Reliability bins and ECE of ``probabilities`` ``[N, C]`` against true ``labels`` ``[N]``."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64) if len(probs) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # (lo, hi]: searchsorted(side="left") puts a value equal to an edge into the bin it closes.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    sum_conf = np.bincount(which, weights=conf, minlength=bins)
    sum_correct = np.bincount(which, weights=correct, minlength=bins)
    nonzero = counts > 0
    accuracy = np.divide(sum_correct, counts, out=np.zeros(bins), where=nonzero)
    confidence = np.divide(sum_conf, counts, out=np.zeros(bins), where=nonzero)
    total = counts.sum()
    ece = float(np.sum(counts * np.abs(accuracy - confidence)) / total) if total else 0.0
    return Reliability(edges, counts, accuracy, confidence, ece)
