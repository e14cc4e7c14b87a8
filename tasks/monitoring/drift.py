"""Drift statistics between a reference sample and a live window (pure numpy/scipy; no model, no I/O)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.contracts.drift import SHARE_FLOOR, population_stability_index, words


def shares(labels: Iterable[str], names: Sequence[str]) -> np.ndarray:
    """Share of each of `names` among `labels` (labels outside `names` count in the denominator); zeros when empty."""
    values = list(labels)
    counts = pd.Series(values, dtype=object).value_counts()
    return np.array([counts.get(name, 0) for name in names], dtype=float) / max(len(values), 1)


def _normalised(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    total = array.sum()
    if total <= 0:
        raise ValueError("shares must hold at least one positive value")
    return array / total


def psi(expected_shares: Sequence[float], actual_shares: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same classes (0 = identical); a zero share is
    floored at SHARE_FLOOR so a class that appears or vanishes gives a large, finite value."""
    return population_stability_index(_normalised(actual_shares), _normalised(expected_shares))


def js_distance(expected_shares: Sequence[float], actual_shares: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2: 0 = identical, 1 = disjoint) of two share vectors."""
    from scipy.spatial.distance import jensenshannon

    # Floored as psi is, so both statistics see the same distributions; rounding may give a tiny negative: clip.
    p = np.maximum(_normalised(expected_shares), SHARE_FLOOR)
    q = np.maximum(_normalised(actual_shares), SHARE_FLOOR)
    return float(np.clip(jensenshannon(p / p.sum(), q / q.sum(), base=2), 0.0, 1.0))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic (0 = same distribution, 1 = disjoint) and its p-value."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        raise ValueError("ks_statistic needs at least one value on each side")
    with warnings.catch_warnings():
        # Heavy ties (token counts) make scipy fall back from the exact p-value with a RuntimeWarning: the
        # statistic is what the check judges, the approximate p-value is evidence only.
        warnings.simplefilter("ignore")
        result = ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def vocabulary_of(texts: Iterable[str]) -> frozenset[str]:
    """Lower-cased words of `texts`, split as the data contract's drift check splits them."""
    found = words(pd.Series(list(texts), dtype=object))
    return frozenset(w for w in pc.unique(found).to_pylist() if w)


def oov_rate(texts: Iterable[str], vocabulary: frozenset[str]) -> float:
    """Share of the word occurrences in `texts` that are not in `vocabulary` (0.0 when there are no words)."""
    found = words(pd.Series(list(texts), dtype=object))
    found = found.filter(pc.not_equal(found, ""))
    if len(found) == 0:
        return 0.0
    known = pa.array(sorted(vocabulary), type=pa.large_string())
    return 1.0 - float(pc.mean(pc.is_in(found, value_set=known).cast(pa.float64())).as_py())


def unknown_rate(unknown_tokens: Sequence[int], tokens: Sequence[int]) -> float:
    """Unknown tokens per token over all texts (0.0 when there are no tokens)."""
    total = float(np.sum(np.asarray(tokens, dtype=float)))
    return float(np.sum(np.asarray(unknown_tokens, dtype=float))) / total if total > 0 else 0.0
