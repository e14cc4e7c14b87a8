"""Resampling statistics for the gate: seeded bootstrap intervals, paired comparisons, McNemar's exact test."""

from __future__ import annotations

import math
from collections.abc import Iterator
from statistics import NormalDist

import numpy as np

from tasks.core.metrics import (calibration_bin, classification_metrics, expected_calibration_error, per_class_rates,
                                roc_auc, roc_auc_counts)

# Resamples drawn per block: memory stays at BLOCK x rows indices whatever the test split's size.
BLOCK = 256
# Row indices a block is counted in at once: bounds each temporary (codes, gathered values) to ~16 MiB on a large
# test split (25,000 rows: 4 pieces a block); a test split of a few thousand rows is counted in one piece.
PIECE = 1 << 21


def resampled_rows(rows: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap resamples ([k, rows] row indices, k <= BLOCK), `samples` in all, seeded."""
    rng = np.random.default_rng(seed)
    for start in range(0, samples, BLOCK):
        yield rng.integers(0, rows, size=(min(BLOCK, samples - start), rows))


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided `confidence` interval (1.96 at 0.95)."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval holding `confidence` of the resampled values."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_interval(correct: np.ndarray, samples: int, confidence: float, seed: int) -> dict[str, float]:
    """Accuracy of a 0/1 `correct` vector with its bootstrap interval: {value, low, high}."""
    correct = np.asarray(correct, dtype=np.float64)
    means = np.concatenate([correct[idx].mean(axis=1) for idx in resampled_rows(len(correct), samples, seed)])
    low, high = interval(means, confidence)
    return {"value": float(correct.mean()), "low": low, "high": high}


def span(value: float, resampled: np.ndarray, confidence: float) -> dict[str, float]:
    """{value, low, high}: the point value with the percentile interval of its resampled values."""
    low, high = interval(resampled, confidence)
    return {"value": float(value), "low": low, "high": high}


def _resample_pieces(rows: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """resampled_rows' blocks, each cut into whole resamples of at most PIECE row indices (at least one resample)."""
    for block in resampled_rows(rows, samples, seed):
        yield from np.array_split(block, max(1, -(-block.size // PIECE)))


def _offsets(idx: np.ndarray, width: int) -> np.ndarray:
    """Per-resample offsets (resample r -> r * width), so one bincount counts every resample of a block apart."""
    return np.arange(idx.shape[0])[:, None] * width


def resampled_confusions(idx: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[k, actual, predicted] confusion matrices of a block of resamples, from one bincount."""
    cells = n_classes * n_classes
    codes = _offsets(idx, cells) + (y_true * n_classes + y_pred)[idx]
    return np.bincount(codes.ravel(), minlength=idx.shape[0] * cells).reshape(idx.shape[0], n_classes, n_classes)


def resampled_ece(idx: np.ndarray, gap: np.ndarray, which: np.ndarray, bins: int) -> np.ndarray:
    """[k] expected calibration errors: sum over bins of |sum of (correct - confidence)| / rows, which equals
    the bin-size-weighted |accuracy - confidence| of tasks.core.metrics.expected_calibration_error."""
    sums = np.bincount((_offsets(idx, bins) + which[idx]).ravel(), weights=gap[idx].ravel(),
                       minlength=idx.shape[0] * bins).reshape(idx.shape[0], bins)
    return np.abs(sums).sum(axis=1) / idx.shape[1]


def resampled_roc_auc(idx: np.ndarray, positive: np.ndarray, score_rank: np.ndarray, scores: int) -> np.ndarray:
    """[k] binary ROC-AUCs (NaN for a resample holding one class): per resample, counts of positive and negative
    rows per distinct score (`score_rank`: each row's rank among the `scores` distinct ones), from one bincount."""
    codes = _offsets(idx, 2 * scores) + (positive * scores + score_rank)[idx]
    counts = np.bincount(codes.ravel(), minlength=idx.shape[0] * 2 * scores).reshape(idx.shape[0], 2, scores)
    return roc_auc_counts(counts[:, 1], counts[:, 0])


def ece_interval(y_true: np.ndarray, probs: np.ndarray, samples: int, confidence: float, seed: int,
                 bins: int) -> dict[str, float]:
    """The expected calibration error {value, low, high} alone, from the resamples metric_intervals draws with the
    same seed (so the same figure it reports), without the other metrics' work."""
    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    confidence_of = probs.max(axis=1)
    gap = (probs.argmax(axis=1) == y_true) - confidence_of
    which = calibration_bin(confidence_of, bins)
    resampled = np.concatenate([resampled_ece(idx, gap, which, bins)
                                for idx in _resample_pieces(len(y_true), samples, seed)])
    return span(expected_calibration_error(probs, y_true, bins), resampled, confidence)


def metric_intervals(y_true: np.ndarray, probs: np.ndarray, label_names: list[str], samples: int,
                     confidence: float, seed: int, bins: int) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, ROC-AUC (2 classes) and ECE, each {value, low, high}:
    point values as classification_metrics gives them, intervals from the same `samples` seeded resamples.
    A class absent from a resample scores precision/recall/F1 0 there, as classification_metrics scores it.
    roc_auc is None unless there are 2 classes and both occur in y_true (otherwise it is undefined)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes, rows = len(label_names), len(y_true)
    if rows == 0:
        raise ValueError("metric_intervals needs at least one row")
    point = classification_metrics(y_true, probs, label_names, bins)
    y_pred = probs.argmax(axis=1)
    confidence_of = probs.max(axis=1)
    gap = (y_pred == y_true) - confidence_of
    which = calibration_bin(confidence_of, bins)
    auc = roc_auc(y_true, probs[:, 1]) if n_classes == 2 else math.nan
    if not math.isnan(auc):
        distinct, score_rank = np.unique(probs[:, 1], return_inverse=True)
    blocks: dict[str, list[np.ndarray]] = {"accuracy": [], "precision": [], "recall": [], "f1": [], "ece": [],
                                           "roc_auc": []}
    for idx in _resample_pieces(rows, samples, seed):
        matrices = resampled_confusions(idx, y_true, y_pred, n_classes)
        precision, recall, f1 = per_class_rates(matrices)
        blocks["accuracy"].append(np.trace(matrices, axis1=1, axis2=2) / rows)
        blocks["precision"].append(precision)
        blocks["recall"].append(recall)
        blocks["f1"].append(f1)
        blocks["ece"].append(resampled_ece(idx, gap, which, bins))
        if not math.isnan(auc):
            blocks["roc_auc"].append(resampled_roc_auc(idx, y_true == 1, score_rank, len(distinct)))
    resampled = {name: np.concatenate(parts) for name, parts in blocks.items() if parts}
    per_class = {
        name: {**{part: span(point["per_class"][name][part], resampled[part][:, i], confidence)
                  for part in ("precision", "recall", "f1")},
               "support": point["per_class"][name]["support"]}
        for i, name in enumerate(label_names)
    }
    # A resample drawing one class only has no ROC-AUC: the interval is taken over the resamples that have one.
    aucs = resampled.get("roc_auc", np.empty(0))
    aucs = aucs[~np.isnan(aucs)]
    return {
        "rows": rows,
        "accuracy": span(point["accuracy"], resampled["accuracy"], confidence),
        "macro_f1": span(point["macro_f1"], resampled["f1"].mean(axis=1), confidence),
        "per_class": per_class,
        "roc_auc": span(auc, aucs, confidence) if not math.isnan(auc) and len(aucs) else None,
        "ece": span(point["ece"], resampled["ece"], confidence),
    }


def paired_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, samples: int,
                      confidence: float, seed: int) -> dict:
    """a - b of accuracy and of macro-F1 on the same resampled rows (paired bootstrap): {value, low, high, se},
    se the analytic paired standard error for accuracy, the resampled differences' standard deviation for macro-F1."""
    y_true, pred_a, pred_b = (np.asarray(v, dtype=np.int64) for v in (y_true, pred_a, pred_b))
    rows = len(y_true)
    if rows == 0:
        raise ValueError("paired_difference needs at least one row")
    accuracy, macro_f1 = [], []
    for idx in _resample_pieces(rows, samples, seed):
        matrix_a = resampled_confusions(idx, y_true, pred_a, n_classes)
        matrix_b = resampled_confusions(idx, y_true, pred_b, n_classes)
        # Correct counts differ as integers before dividing, so swapping a and b negates every value exactly.
        accuracy.append((np.trace(matrix_a, axis1=1, axis2=2) - np.trace(matrix_b, axis1=1, axis2=2)) / rows)
        macro_f1.append(per_class_rates(matrix_a)[2].mean(axis=1) - per_class_rates(matrix_b)[2].mean(axis=1))
    accuracy_resampled, macro_f1_resampled = np.concatenate(accuracy), np.concatenate(macro_f1)
    a_correct, b_correct = pred_a == y_true, pred_b == y_true
    f1_a = per_class_rates(np.bincount(y_true * n_classes + pred_a, minlength=n_classes ** 2)
                           .reshape(n_classes, n_classes))[2]
    f1_b = per_class_rates(np.bincount(y_true * n_classes + pred_b, minlength=n_classes ** 2)
                           .reshape(n_classes, n_classes))[2]
    return {
        "accuracy": {**span((int(a_correct.sum()) - int(b_correct.sum())) / rows, accuracy_resampled, confidence),
                     "se": paired_accuracy_se(a_correct, b_correct)},
        "macro_f1": {**span(f1_a.mean() - f1_b.mean(), macro_f1_resampled, confidence),
                     "se": float(macro_f1_resampled.std(ddof=1)) if len(macro_f1_resampled) > 1 else 0.0},
    }


# The three outcomes of a check (a cost check: how much accuracy a cheaper model gives up against its reference).
CHECK_PASS, CHECK_FAIL, CHECK_INCONCLUSIVE = "pass", "fail", "inconclusive"


def paired_cost(y_true: np.ndarray, reference_pred: np.ndarray, candidate_pred: np.ndarray, n_classes: int,
                bound: float, samples: int, confidence: float, seed: int) -> dict:
    """Accuracy the candidate gives up against the reference on the same rows (reference - candidate), with its
    paired bootstrap interval, judged against `bound`: {value, low, high, se, rows, disagreement, bound, outcome,
    rows_needed}; outcome pass when the interval's upper end is within the bound, fail when its lower end is
    beyond it, inconclusive otherwise (with the rows that would settle it)."""
    y_true, reference_pred, candidate_pred = (np.asarray(v, dtype=np.int64) for v in (y_true, reference_pred,
                                                                                      candidate_pred))
    drop = paired_difference(y_true, reference_pred, candidate_pred, n_classes, samples, confidence, seed)["accuracy"]
    disagreement = float(((reference_pred == y_true) != (candidate_pred == y_true)).mean())
    return {**drop, "rows": len(y_true), "disagreement": disagreement, "bound": bound,
            **cost_outcome(drop, disagreement, bound, confidence)}


def cost_outcome(drop: dict[str, float], disagreement: float, bound: float, confidence: float) -> dict:
    """The outcome of a cost interval {value, low, high} against `bound` (pass: high <= bound; fail: low > bound;
    inconclusive otherwise) and, when inconclusive, rows_needed: the rows at which an interval of this
    disagreement and this difference would no longer straddle the bound (None when decided, and when the
    difference sits on the bound: no row count settles it)."""
    if drop["high"] <= bound:
        return {"outcome": CHECK_PASS, "rows_needed": None}
    if drop["low"] > bound:
        return {"outcome": CHECK_FAIL, "rows_needed": None}
    # The same normal approximation as the champion comparison's: z * paired SE(n) < |bound - difference|.
    return {"outcome": CHECK_INCONCLUSIVE,
            "rows_needed": rows_to_resolve(disagreement, drop["value"], abs(bound - drop["value"]), confidence)}


def paired_accuracy_se(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Standard error of the accuracy difference a - b on the same rows: sqrt((p_disc - d^2) / n), p_disc the share
    of rows exactly one gets right, d the difference; 0 when they never disagree."""
    a_correct, b_correct = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    rows = len(a_correct)
    if rows == 0:
        return 0.0
    disagreement = float((a_correct != b_correct).mean())
    difference = (int(a_correct.sum()) - int(b_correct.sum())) / rows
    # p_disc >= |d| always; max() only absorbs rounding.
    return math.sqrt(max(disagreement - difference ** 2, 0.0) / rows)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's exact test: rows only a gets right, rows only b gets right, and the two-sided binomial p-value of
    a_only out of a_only + b_only at 0.5 (1.0 when both are 0)."""
    from scipy.stats import binom  # scipy.stats costs a second to import: only the gate's comparison needs it

    a_correct, b_correct = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    a_only, b_only = int((a_correct & ~b_correct).sum()), int((b_correct & ~a_correct).sum())
    # The binomial at 0.5 is symmetric: two-sided = twice the smaller tail, written so that swapping a and b
    # gives the same float (scipy's binomtest agrees to rounding).
    p_value = min(1.0, 2.0 * float(binom.cdf(min(a_only, b_only), a_only + b_only, 0.5)))
    return {"a_only": a_only, "b_only": b_only, "p_value": p_value}


def rows_to_resolve(disagreement: float, difference: float, margin: float, confidence: float) -> int | None:
    """Test rows a paired accuracy comparison needs for its interval's half-width (z * paired SE, at this share of
    disagreeing rows and this difference) to come within `margin`: ceil(z^2 (p_disc - d^2) / margin^2); 0 when the
    variance is 0; None when margin is 0 (no number of rows resolves it) or too small for the count to be a float."""
    if margin <= 0:
        return None
    variance = max(disagreement - difference ** 2, 0.0)
    if variance == 0:
        return 0
    z = z_value(confidence)
    # (z sd / margin)^2 rather than z^2 var / margin^2: a tiny margin's square would underflow to 0.
    ratio = z * math.sqrt(variance) / margin
    needed = ratio * ratio  # (inf past the float range, where ** raises)
    return math.ceil(needed) if math.isfinite(needed) else None
