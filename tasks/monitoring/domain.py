"""The domain classifier: how well a TF-IDF + logistic regression tells live texts from training texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.judging.domain import domain_classifier, domain_features


def balanced_sample(live: Sequence[str], reference: Sequence[str], max_texts: int,
                    seed: int) -> tuple[list[str], np.ndarray]:
    """The same number of texts from each side (at most max_texts, seeded), and 1 for live / 0 for reference."""
    per_side = min(len(live), len(reference), max_texts)
    rng = np.random.default_rng(seed)
    picked = [[side[i] for i in sorted(rng.choice(len(side), size=per_side, replace=False))]
              for side in (live, reference)]
    return picked[0] + picked[1], np.repeat([1, 0], per_side)


def domain_auc(live_texts: Sequence[str], reference_texts: Sequence[str], folds: int, max_texts: int,
               seed: int) -> tuple[float, float] | None:
    """Cross-validated ROC-AUC (mean over `folds` stratified folds) of telling live texts from reference texts,
    and the folds' standard deviation; ~0.5 = indistinguishable, 1.0 = separable. None when there are no live
    texts (serve.log_texts off) or too few on a side for `folds` folds; ValueError when no word occurs twice."""
    if not live_texts or min(len(live_texts), len(reference_texts), max_texts) < folds:
        return None
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    texts, side = balanced_sample(live_texts, reference_texts, max_texts, seed)
    # (ValueError when no word occurs in two texts: the caller reports the check as not computable.)
    features = domain_features(texts)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(domain_classifier(), features, side, cv=splitter, scoring="roc_auc")
    return float(np.mean(scores)), float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
