"""Classification metrics from label ids and probabilities (numpy only)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [n, classes] logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[actual, predicted] counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


# Bins of the ECE where no tunable names them (evaluate's and train's metrics); the gate passes
# gate.calibration_bins.
DEFAULT_CALIBRATION_BINS = 10


def per_class_rates(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class of [..., actual, predicted] counts; 0 where a class is never predicted
    (precision) or never present (recall), so an absent class pulls macro-F1 down instead of vanishing from it."""
    true_pos = np.diagonal(matrix, axis1=-2, axis2=-1).astype(float)
    predicted = matrix.sum(axis=-2)
    actual = matrix.sum(axis=-1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    return precision, recall, f1


def calibration_bin(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each confidence in [0, 1]: bin b holds [b/bins, (b+1)/bins), the last one also 1.0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, bins: int) -> list[dict]:
    """The reliability diagram: per non-empty confidence bin, its edges, mean confidence, accuracy and rows."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    which = calibration_bin(confidence, bins)
    rows = np.bincount(which, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    return [{"bin_low": b / bins, "bin_high": (b + 1) / bins, "confidence": float(confidence_sum[b] / rows[b]),
             "accuracy": float(correct_sum[b] / rows[b]), "rows": int(rows[b])}
            for b in range(bins) if rows[b] > 0]


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = DEFAULT_CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    table = reliability_bins(probs, y_true, bins)
    return float(sum(b["rows"] * abs(b["accuracy"] - b["confidence"]) for b in table) / len(y_true))


def roc_auc_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """ROC-AUC from [..., scores] counts of positive and negative rows per distinct score, ascending: the share of
    (positive, negative) pairs ranked right, ties counting half (Mann-Whitney U / (n1 n0)); NaN without both classes."""
    below = np.cumsum(negatives, axis=-1) - negatives
    right = (positives * (below + 0.5 * negatives)).sum(axis=-1)
    pairs = positives.sum(axis=-1) * negatives.sum(axis=-1)
    return np.divide(right, pairs, out=np.full(np.shape(right), np.nan), where=pairs > 0)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC-AUC of `scores` (probability of class 1), ties counting half; NaN when only one class is present."""
    distinct, which = np.unique(scores, return_inverse=True)
    positive = np.asarray(y_true) == 1
    counts = [np.bincount(which[rows], minlength=len(distinct)) for rows in (positive, ~positive)]
    return float(roc_auc_counts(*counts))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
                           bins: int = DEFAULT_CALIBRATION_BINS) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and calibration."""
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(label_names))
    precision, recall, f1 = per_class_rates(matrix)
    actual = matrix.sum(axis=1)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1.mean()),
        "ece": expected_calibration_error(probs, y_true, bins),
        "rows": int(len(y_true)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


# The temperatures fit_temperature searches (a model 20x over- or under-confident is outside it: the fit then sits
# on an end of this range, which calibration_record reports).
TEMPERATURE_RANGE = (0.05, 20.0)


def log_likelihood_loss(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(y_true)), y_true]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, iterations: int = 80) -> float:
    """The temperature T minimising log_likelihood_loss(logits / T) (temperature scaling; argmax is unchanged).

    The loss is convex in 1/T, so it is unimodal in log T and a golden-section search over log T within
    TEMPERATURE_RANGE finds its minimum (80 steps narrow the range by 0.618^80, far below float noise).
    """
    if len(y_true) == 0:
        raise ValueError("no rows to fit a temperature on")
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = (log_likelihood_loss(logits, y_true, float(np.exp(t))) for t in (a, b))
    for _ in range(iterations):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = log_likelihood_loss(logits, y_true, float(np.exp(a)))
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = log_likelihood_loss(logits, y_true, float(np.exp(b)))
    return float(np.exp((low + high) / 2))


def calibration_record(logits: np.ndarray, y_true: np.ndarray, split: str,
                       bins: int = DEFAULT_CALIBRATION_BINS) -> dict:
    """Temperature scaling fitted on (logits, y_true) of `split`: the temperature and the split's ECE and
    log-likelihood loss before and after (serving.json's `calibration`, beside quantize's and evaluate's figures)."""
    temperature = fit_temperature(logits, y_true)
    before, after = softmax(logits), softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return {"method": "temperature", "temperature": round(temperature, 6),
            "fitted_on": {"split": split, "rows": int(len(y_true))},
            "at_range_end": bool(not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] * 0.99),
            "ece_before": expected_calibration_error(before, y_true, bins),
            "ece_after": expected_calibration_error(after, y_true, bins),
            "nll_before": log_likelihood_loss(logits, y_true), "nll_after": log_likelihood_loss(logits, y_true, temperature)}
