"""Accuracy estimated without labels from calibrated probabilities (confidence-based performance estimation).

If a model's probabilities are calibrated, its top-class probability c_i is the chance that its label for text i is
right, so the number of right answers in a window is a sum of independent Bernoulli(c_i): its expected share is
mean(c) and its variance sum(c_i (1 - c_i)) / n^2. The interval is that of the accuracy the window's own texts would
show once labelled; it does not cover a calibration that is off on the live texts, and a shift that changes
p(label | text) (the same texts meaning another label) leaves every c_i, and so the estimate, where it was.
"""

from __future__ import annotations

import numpy as np

from tasks.judging.stats import z_value


def expected_accuracy(top_probabilities: np.ndarray, confidence: float) -> dict[str, float]:
    """{value, low, high, rows}: the accuracy a calibrated model expects of texts whose top-class probabilities are
    `top_probabilities`, with the `confidence` interval of the accuracy those texts would realise."""
    c = np.asarray(top_probabilities, dtype=np.float64)
    if c.size == 0:
        raise ValueError("no probabilities to estimate accuracy from")
    value = float(c.mean())
    half = z_value(confidence) * float(np.sqrt(np.sum(c * (1 - c)))) / c.size
    return {"value": value, "low": max(0.0, value - half), "high": min(1.0, value + half), "rows": int(c.size)}


def estimated_difference(probs_a: np.ndarray, probs_b: np.ndarray, confidence: float) -> dict[str, float]:
    """{value, low, high, rows, disagreements}: expected accuracy of model b minus model a on the same texts
    ([n, classes] calibrated probabilities each), paired.

    The truth of text i is taken to follow q_i, the mean of the two models' distributions (one belief both answers
    are judged by, so a text both label alike adds exactly 0). Where they disagree, b gains q_i(b's label) and loses
    q_i(a's label); the interval is the normal one of the sum of those independent per-text differences.
    """
    a = np.asarray(probs_a, dtype=np.float64)
    b = np.asarray(probs_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"expected two [n, classes] arrays of one shape, got {a.shape} and {b.shape}")
    rows = np.arange(a.shape[0])
    label_a, label_b = a.argmax(axis=1), b.argmax(axis=1)
    q = (a + b) / 2
    gain, loss = q[rows, label_b], q[rows, label_a]
    differs = label_a != label_b
    mean = np.where(differs, gain - loss, 0.0)
    # Per text the difference is +1 (b right), -1 (a right) or 0 (both wrong, or the same label).
    variance = np.where(differs, gain + loss - mean**2, 0.0)
    value = float(mean.mean())
    half = z_value(confidence) * float(np.sqrt(variance.sum())) / a.shape[0]
    return {"value": value, "low": value - half, "high": value + half, "rows": int(a.shape[0]),
            "disagreements": int(differs.sum())}
