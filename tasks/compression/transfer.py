"""Unlabelled transfer texts for distillation: sentences of data rows that no prepare split holds.

The student learns from the teacher's soft labels on these texts too (no label needed). They must never leak the
held-out splits: a sentence equal to a dev or test text, or a near duplicate of one by prepare's MinHash rule, is
dropped; rows whose text is in any split are never sampled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.contracts.near_dup import NearDuplicateSettings, near_duplicate_pairs
from tasks.contracts.text import is_text, normalise_texts
from tasks.core.config import DataConfig, TransferConfig
from tasks.judging.compare import row_keys

# A sentence ends at . ! or ? followed by whitespace; IMDB reviews mark paragraphs with <br /> tags.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclass(frozen=True)
class Transfer:
    """The transfer texts, the keys of the source rows they were cut from, and what was dropped on the way."""

    texts: list[str]
    row_keys: list[str]  # tasks.judging.compare.row_keys of every sampled row, sorted: benchmarks must skip them
    counts: dict[str, Any]


def source_texts(data: pd.DataFrame, cfg: DataConfig, sources: list[str]) -> tuple[pd.Series, list[str]]:
    """Texts (strings only) of the data rows whose data.source_column is one of `sources`, in data order; and the
    sources no row carries (all of them when the data has no source column)."""
    if not sources:
        return pd.Series([], dtype=object), []
    if cfg.source_column is None or cfg.source_column not in data.columns:
        return pd.Series([], dtype=object), list(sources)
    source = data[cfg.source_column].astype(str)
    absent = sorted(set(sources) - set(source))
    texts = data.loc[source.isin(sources).to_numpy(), cfg.text_column]
    return texts[is_text(texts).to_numpy()].reset_index(drop=True), absent


def outside_splits(texts: pd.Series, split_texts: Sequence[str]) -> pd.Series:
    """The texts whose normalised form is in no split, each normalised text once (its first row), in data order."""
    normalised = pd.Series(normalise_texts(texts).to_pylist(), index=texts.index, dtype=object)
    taken = set(normalise_texts(list(split_texts)).to_pylist())
    keep = ~normalised.isin(taken) & ~normalised.duplicated()
    return texts[keep.to_numpy()]


def sample_rows(texts: pd.Series, rows: int, seed: int) -> pd.Series:
    """A seeded sample of at most `rows` texts, kept in data order."""
    if len(texts) <= rows:
        return texts
    picked = np.sort(np.random.default_rng(seed).choice(len(texts), size=rows, replace=False))
    return texts.iloc[picked]


def sentences(text: str) -> list[str]:
    """A text's sentences (split after . ! ? and whitespace; <br /> tags read as spaces), stripped, none empty."""
    flat = BREAK_TAG.sub(" ", text)
    return [s.strip() for s in SENTENCE_BREAK.split(flat) if s.strip()]


def held_out_leaks(candidates: list[str], held_out: Sequence[str],
                   near: NearDuplicateSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: equal to a held-out text (normalised), and a near duplicate of one (MinHash + exact Jaccard
    >= near.jaccard over word shingles, as prepare's split contract judges leakage). Two bool [len(candidates)]."""
    mine = normalise_texts(candidates).to_pylist()
    theirs = set(normalise_texts(list(held_out)).to_pylist())
    equal = np.array([t in theirs for t in mine], dtype=bool)
    distinct = sorted(set(mine) | theirs)  # sorted: the pairs found do not depend on input order
    position = {t: i for i, t in enumerate(distinct)}
    is_held_out = np.array([t in theirs for t in distinct], dtype=bool)
    pairs, _ = near_duplicate_pairs(pa.array(distinct, type=pa.large_string()), near)
    near_held_out = np.zeros(len(distinct), dtype=bool)
    for a, b in pairs.tolist():
        if is_held_out[b]:
            near_held_out[a] = True
        if is_held_out[a]:
            near_held_out[b] = True
    close = np.array([near_held_out[position[t]] for t in mine], dtype=bool) & ~equal
    return equal, close


def cap_texts(texts: list[str], max_texts: int, seed: int) -> list[str]:
    """A seeded sample of at most max_texts texts, kept in order."""
    if len(texts) <= max_texts:
        return texts
    picked = np.sort(np.random.default_rng([seed, 1]).choice(len(texts), size=max_texts, replace=False))
    return [texts[i] for i in picked]


def transfer_texts(texts: pd.Series, split_texts: Sequence[str], held_out: Sequence[str], cfg: TransferConfig,
                   near: NearDuplicateSettings, seed: int) -> Transfer:
    """Transfer texts from the candidate rows `texts`: rows in no split (split_texts: every split's texts) sampled,
    cut into sentences of at least cfg.min_words words (each once), those equal or near to a held-out (dev or
    test) text dropped, at most cfg.max_texts kept."""
    fresh = outside_splits(texts, split_texts)
    sampled = sample_rows(fresh, cfg.rows, seed)
    cut = [s for text in sampled.tolist() for s in sentences(text)]
    long_enough = [s for s in cut if len(s.split()) >= cfg.min_words]
    normalised = pd.Series(normalise_texts(long_enough).to_pylist(), dtype=object)
    distinct = [s for s, repeated in zip(long_enough, normalised.duplicated().tolist()) if not repeated]
    equal, close = held_out_leaks(distinct, held_out, near) if distinct else (np.zeros(0, bool), np.zeros(0, bool))
    clean = [s for s, bad in zip(distinct, (equal | close).tolist()) if not bad]
    kept = cap_texts(clean, cfg.max_texts, seed)
    counts = {
        "candidate_rows": len(texts),
        "rows_in_no_split": len(fresh),
        "rows_sampled": len(sampled),
        "sentences": len(cut),
        "too_short": len(cut) - len(long_enough),
        "repeated": len(long_enough) - len(distinct),
        "equal_to_dev_or_test": int(equal.sum()),
        "near_duplicate_of_dev_or_test": int(close.sum()),
        "over_max_texts": len(clean) - len(kept),
        "texts": len(kept),
    }
    return Transfer(texts=kept, row_keys=sorted(set(row_keys(sampled.tolist()))), counts=counts)
