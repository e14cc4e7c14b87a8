"""The domain classifier both the monitor (domain_auc: can live texts be told from training texts?) and the gate
(accuracy on current traffic: how much does each test row look like live traffic?) fit: TF-IDF + logistic regression.
One recipe, so the gate's weights come from the classifier whose ROC-AUC the monitor alarms on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def domain_features(texts: Sequence[str]) -> Any:
    """Sparse TF-IDF features of word 1-2-grams over `texts` (both sides together).

    The vectoriser never sees which side a text is on, so fitting it once on every text leaks nothing into a held-out
    fold, and vectorising long texts once instead of per fold saves most of the time. min_df=2: a word in one text only
    cannot tell the sides apart in a held-out fold; dropping it halves the features of long texts. ValueError when no
    word occurs in two texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit_transform(list(texts))


def domain_classifier() -> Any:
    """A fresh classifier of one side (1) against the other (0). liblinear: several times faster than lbfgs on these
    sparse, often separable sets."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(solver="liblinear", max_iter=1000)
