"""Slices of the test split for the gate: rows by length in tokens and by the value of a data column, each with
its accuracy, interval and gap to overall, judged only when it holds enough rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import GateConfig
from tasks.judging.stats import accuracy_interval

# Texts encoded per call: bounded memory on large test splits.
CHUNK = 10_000


def token_lengths(tokenizer_file: Path, texts: list[str]) -> np.ndarray:
    """Tokens per text with a served folder's tokenizer.json, special tokens counted, nothing truncated or padded."""
    from tokenizers import Tokenizer  # the Rust tokenizer alone: no torch, no transformers

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    # A saved tokenizer may carry the model's truncation (max_length) and padding: a text longer than
    # max_length must count its full length, since those are the rows the model sees cut.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts: list[int] = []
    for start in range(0, len(texts), CHUNK):
        counts += [len(e.ids) for e in tokenizer.encode_batch(texts[start:start + CHUNK], add_special_tokens=True)]
    return np.asarray(counts, dtype=np.int64)


def bucket_labels(edges: list[int]) -> list[str]:
    """The bucket names for increasing upper edges, in edge order: [16, 32] -> 1-16, 17-32, >32."""
    lows = [1, *(e + 1 for e in edges[:-1])]
    return [f"{low}-{high}" for low, high in zip(lows, edges)] + [f">{edges[-1]}"]


def length_buckets(lengths: np.ndarray, edges: list[int]) -> np.ndarray:
    """Each length's bucket name (upper edges inclusive: 16 -> 1-16, 17 -> 17-32, above the last -> >48)."""
    names = np.asarray(bucket_labels(edges), dtype=object)
    return names[np.searchsorted(np.asarray(edges), np.asarray(lengths), side="left")]


def slice_values(values: pd.Series, edges: list[int]) -> list[str]:
    """A column's distinct values in report order: length buckets in edge order, any other value sorted."""
    rank = {name: i for i, name in enumerate(bucket_labels(edges))}
    return sorted(values.unique(), key=lambda v: (rank.get(v, len(rank)), str(v)))


def slice_report(frame: pd.DataFrame, columns: list[str], cfg: GateConfig, seed: int,
                 overall_accuracy: float) -> list[dict[str, Any]]:
    """One record per (column, value) present in `frame` (label, predicted, and the columns): rows, accuracy with
    its interval, gap to overall, and the verdict; a slice under gate.min_slice_rows is reported, not judged.

    Values with no rows (an empty length bucket) are left out: a slice exists only where the test split has rows.
    """
    correct = (frame["label"].to_numpy() == frame["predicted"].to_numpy())
    records = []
    for column in columns:
        values = frame[column]
        for value in slice_values(values.dropna(), cfg.length_buckets):  # prepare writes missing ones as "(missing)"
            hits = correct[(values == value).to_numpy()]
            plain = value.item() if isinstance(value, np.generic) else value  # JSON-ready
            records.append(judge_slice(column, plain, hits, cfg, seed, overall_accuracy))
    return records


def judge_slice(column: str, value: Any, correct: np.ndarray, cfg: GateConfig, seed: int,
                overall_accuracy: float) -> dict[str, Any]:
    """The record of one slice from its rows' 0/1 correctness (see slice_report)."""
    accuracy = accuracy_interval(correct, cfg.bootstrap_samples, cfg.confidence, seed)
    # Rounded: accuracies are fractions of whole rows, and 0.8 - 0.7 must not read as above a 0.10 bound.
    gap = round(overall_accuracy - accuracy["value"], 12)
    judged = len(correct) >= cfg.min_slice_rows
    failed = []
    if judged and accuracy["value"] < cfg.min_slice_accuracy:
        failed.append(f"accuracy {accuracy['value']:.3f} < {_bound(cfg.min_slice_accuracy)}")
    if judged and gap > cfg.max_slice_gap:
        failed.append(f"gap {gap:.3f} > {_bound(cfg.max_slice_gap)}")
    return {"column": column, "value": value, "rows": len(correct), "accuracy": accuracy, "gap": gap,
            "judged": judged, "passed": (not failed) if judged else None, "failed": failed}


def _bound(value: float) -> str:
    """A threshold as written in params.yaml, with at least two decimals: 0.7 -> 0.70, 0.125 -> 0.125."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"
