"""Accuracy on current traffic: the test rows reweighted toward the live texts by a domain classifier.

Under covariate shift (the texts' mix changes, p(label | text) does not), the accuracy on live traffic is the test
split's accuracy with each row weighted by the density ratio p_live(text) / p_test(text). A TF-IDF + logistic
regression that tells live texts from test texts gives it (tasks/judging/domain.py: the monitor's domain_auc fits
the same): ratio = odds of p(live | text) x (test texts / live texts it was fitted on). Only texts go in: the labels
never choose a weight, so nothing is tuned on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.metrics import per_class_rates, roc_auc
from tasks.judging.domain import domain_classifier, domain_features
from tasks.judging.stats import resampled_rows, span
from tasks.runtime.prediction_log import logged_texts, read_prediction_log

VERDICT_REWEIGHTED = "reweighted"
VERDICT_OVERLAP_TOO_SMALL = "overlap too small"
VERDICT_NOT_COMPUTED = "not computed"

# ---------------------------------------------------------------------------------------------------------------------
# Live texts from the prediction log

def read_live_texts(folder: Path, max_texts: int) -> tuple[list[str], str | None]:
    """The newest `max_texts` texts prod answered in the prediction log under `folder`, oldest first, and None; or
    [] and why there are none (no log, no records, or records without texts: serve.log_texts off)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], f"no prediction log at {folder}"
    records = read_prediction_log(folder)
    if not records:
        return [], f"the prediction log at {folder} holds no records"
    texts = logged_texts(records)
    if not texts:
        return [], (f"the prediction log at {folder} holds {len(records)} records and no texts "
                    f"(serve.log_texts is off: only hashes are logged)")
    return texts[-max_texts:], None


def sampled_live_texts(live_texts: Sequence[str], max_texts: int, seed: int) -> list[str]:
    """At most `max_texts` live texts, a seeded sample in their order (all of them when there are fewer)."""
    if len(live_texts) <= max_texts:
        return list(live_texts)
    picks = np.sort(np.random.default_rng(seed).choice(len(live_texts), size=max_texts, replace=False))
    return [live_texts[i] for i in picks]


def cross_fitted_ratios(test_texts: Sequence[str], live_texts: Sequence[str], folds: int,
                        seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold p(live | text) and density ratio p_live / p_test of every test text and every live text: both
    sides are cut into `folds` stratified folds, and a fold's texts are scored by a classifier fitted on the other
    folds only, so no weight comes from a classifier that saw its own row. ratio = p / (1 - p) x the fitted rows'
    test / live count (the classifier's prior odds undone). ValueError when no word occurs in two texts."""
    from sklearn.model_selection import StratifiedKFold

    texts = [*test_texts, *live_texts]
    side = np.repeat([0, 1], [len(test_texts), len(live_texts)])
    features = domain_features(texts)
    p_live, ratio = np.empty(len(texts)), np.empty(len(texts))
    for fitted, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, side):
        model = domain_classifier().fit(features[fitted], side[fitted])
        p = np.clip(model.predict_proba(features[held])[:, 1], 1e-12, 1 - 1e-12)
        prior = (side[fitted] == 0).sum() / (side[fitted] == 1).sum()
        p_live[held], ratio[held] = p, p / (1 - p) * prior
    rows = len(test_texts)
    return {"test_p_live": p_live[:rows], "test_ratio": ratio[:rows], "live_p_live": p_live[rows:],
            "live_ratio": ratio[rows:]}


def clipped_weights(ratios: np.ndarray, max_weight: float) -> np.ndarray:
    """Density ratios capped at `max_weight` (one test row never counts for more than that many live texts' worth of
    evidence), then scaled to mean 1."""
    clipped = np.minimum(np.asarray(ratios, dtype=np.float64), max_weight)
    return clipped / clipped.mean()


def supported_share(test_ratios: np.ndarray, max_weight: float) -> float:
    """The share of the live traffic the clipped test rows stand for: the mean over test rows of min(ratio,
    max_weight), at most 1. Since E_test[p_live / p_test] is the live mass inside the test split's support, live
    texts unlike any test text (or beyond the cap) lower it; the weights, scaled to mean 1, cannot show that."""
    return min(1.0, float(np.minimum(np.asarray(test_ratios, dtype=np.float64), max_weight).mean()))


def effective_rows(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: n for equal weights, 1 when one row holds all the weight."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / np.square(weights).sum())


# ---------------------------------------------------------------------------------------------------------------------
# Weighted figures

def weighted_confusion(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """[actual, predicted] sums of the rows' weights."""
    return np.bincount(y_true * n_classes + y_pred, weights=weights, minlength=n_classes ** 2).reshape(n_classes,
                                                                                                     n_classes)


def weighted_metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, n_classes: int, samples: int,
                     confidence: float, seed: int) -> dict[str, dict[str, float]]:
    """Weighted accuracy and macro-F1, each {value, low, high}: intervals from `samples` seeded bootstrap resamples of
    the rows, each row carrying its weight (the weights themselves are held fixed). Equal weights give the plain
    figures, and the same interval as stats.accuracy_interval."""
    y_true, y_pred = (np.asarray(v, dtype=np.int64) for v in (y_true, y_pred))
    weights = np.asarray(weights, dtype=np.float64)
    correct = (y_true == y_pred).astype(np.float64)
    cells = n_classes * n_classes
    accuracy, macro_f1 = [], []
    for idx in resampled_rows(len(y_true), samples, seed):
        w = weights[idx]
        accuracy.append((w * correct[idx]).sum(axis=1) / w.sum(axis=1))
        codes = np.arange(idx.shape[0])[:, None] * cells + (y_true * n_classes + y_pred)[idx]
        matrices = np.bincount(codes.ravel(), weights=w.ravel(), minlength=idx.shape[0] * cells)
        macro_f1.append(per_class_rates(matrices.reshape(-1, n_classes, n_classes))[2].mean(axis=1))
    point_f1 = per_class_rates(weighted_confusion(y_true, y_pred, weights, n_classes))[2].mean()
    return {"accuracy": span(float((weights * correct).sum() / weights.sum()), np.concatenate(accuracy), confidence),
            "macro_f1": span(float(point_f1), np.concatenate(macro_f1), confidence)}


# ---------------------------------------------------------------------------------------------------------------------
# The whole estimate

def accuracy_on_live_traffic(test_texts: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int],
                             live_texts: Sequence[str], n_classes: int, *, folds: int, max_texts: int,
                             max_weight: float, min_effective_rows: int, min_supported_share: float, samples: int,
                             confidence: float, seed: int) -> dict[str, Any]:
    """The judged model's accuracy and macro-F1 on the test rows reweighted toward `live_texts` (see the module),
    beside the unweighted figures, with the overlap diagnostics. verdict: `reweighted`; `overlap too small` when the
    weights leave fewer than `min_effective_rows` effective test rows, or the test rows stand for less than
    `min_supported_share` of the live traffic (no weighted figure is claimed: weighted is None); `not computed` when a
    side has fewer texts than `folds` or no word occurs in two texts. `why` says which.
    per_row holds each test row's out-of-fold p(live | text), density ratio and weight (a report leaves it out)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(test_texts) == len(y_true) == len(y_pred):
        raise ValueError(f"test_texts, y_true and y_pred differ in length: {len(test_texts)}, {len(y_true)}, "
                         f"{len(y_pred)}")
    live = sampled_live_texts(live_texts, max_texts, seed)
    settings = {"folds": folds, "max_texts": max_texts, "max_weight": max_weight,
                "min_effective_rows": min_effective_rows, "min_supported_share": min_supported_share}
    found: dict[str, Any] = {"test_rows": len(y_true), "live_texts": len(live), "live_texts_given": len(live_texts),
                             "settings": settings,
                             "unweighted": weighted_metrics(y_true, y_pred, np.ones(len(y_true)), n_classes, samples,
                                                            confidence, seed)}
    if min(len(live), len(y_true)) < folds:
        return {**found, **_not_computed(f"{len(live)} live texts and {len(y_true)} test rows: each side needs at "
                                         f"least {folds} (folds)")}
    try:
        fitted = cross_fitted_ratios(test_texts, live, folds, seed)
    except ValueError as exc:  # TfidfVectorizer: no word occurs in two texts
        return {**found, **_not_computed(f"the domain classifier found no features ({exc})")}
    weights = clipped_weights(fitted["test_ratio"], max_weight)
    effective = effective_rows(weights)
    supported = supported_share(fitted["test_ratio"], max_weight)
    side = np.repeat([0, 1], [len(y_true), len(live)])
    found.update(
        effective_rows=effective, clipped_test_rows=int((fitted["test_ratio"] > max_weight).sum()),
        live_share_supported=supported,
        domain_auc=roc_auc(side, np.concatenate([fitted["test_p_live"], fitted["live_p_live"]])),
        per_row={"p_live": fitted["test_p_live"].tolist(), "ratio": fitted["test_ratio"].tolist(),
                 "weight": weights.tolist()})
    overlap = (f"{effective:.0f} effective test rows of {len(y_true)}, standing for {supported:.0%} of the live "
               f"traffic")
    short = [reason for reason, falls_short in (
        (f"fewer rows than min_effective_rows ({min_effective_rows})", effective < min_effective_rows),
        (f"less than min_supported_share ({min_supported_share:g})", supported < min_supported_share)) if falls_short]
    if short:
        return {**found, "verdict": VERDICT_OVERLAP_TOO_SMALL, "weighted": None,
                "why": f"{overlap}: {' and '.join(short)}, so no figure on the live traffic is claimed"}
    return {**found, "verdict": VERDICT_REWEIGHTED, "why": overlap,
            "weighted": weighted_metrics(y_true, y_pred, weights, n_classes, samples, confidence, seed)}


def _not_computed(why: str) -> dict[str, Any]:
    return {"verdict": VERDICT_NOT_COMPUTED, "why": why, "weighted": None, "effective_rows": None,
            "clipped_test_rows": None, "live_share_supported": None, "domain_auc": None, "per_row": None}
