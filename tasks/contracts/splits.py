"""The split contract: per-split class balance, no exact or near-duplicate leakage, token lengths.

Checked by prepare on the splits it is about to write (and by `tunegate validate PATH`), with the
GX suite named in prepare.contract, over two derived tables: `rows` (one per row of every split:
leakage flags, token counts) and `classes` (one per split x class: rows and share).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.config import PipelineConfig, PrepareConfig, TrainConfig
from tasks.contracts.report import make_report
from tasks.contracts.suite import load_suite_spec, run_suite
from tasks.contracts.near_dup import NearDuplicateSettings, near_duplicate_pairs
from tasks.contracts.text import dictionary_encoded, normalise_texts

SPLITS = ("train", "dev", "test")
SUITE = "splits"


@dataclass(frozen=True)
class TextKeys:
    """Each row's normalised text as an integer code into `texts` (the distinct normalised texts, sorted)."""

    codes: np.ndarray
    texts: pa.Array

    @classmethod
    def of(cls, texts: pd.Series) -> TextKeys:
        encoded = dictionary_encoded(normalise_texts(texts))
        # Sorted codes make the split independent of row order.
        order = pc.sort_indices(encoded.dictionary).to_numpy()
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return cls(codes=rank[encoded.indices.to_numpy()].astype(np.int64), texts=encoded.dictionary.take(order))


def near_duplicate_settings(cfg: PrepareConfig, seed: int) -> NearDuplicateSettings:
    return NearDuplicateSettings(jaccard=cfg.near_duplicate_jaccard, shingle_words=cfg.shingle_words,
                                 permutations=cfg.minhash_permutations, bands=cfg.lsh_bands, seed=seed)


def key_pairs(keys: TextKeys, cfg: PrepareConfig, seed: int) -> pd.DataFrame:
    """Near-duplicate pairs of distinct normalised texts: columns a, b (codes) and jaccard."""
    pairs, similarity = near_duplicate_pairs(keys.texts, near_duplicate_settings(cfg, seed))
    return pd.DataFrame({"a": pairs[:, 0], "b": pairs[:, 1], "jaccard": similarity})


def leakage_table(split: np.ndarray, keys: TextKeys, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per row: leak_exact (its normalised text is in another split too), leak_near (a near duplicate
    is in another split), and near_partner (that duplicate's split and Jaccard, for the report)."""
    rows = pd.DataFrame({"code": keys.codes, "split": split})
    per_code = rows.drop_duplicates()
    exact = per_code.groupby("code")["split"].transform("nunique") > 1
    leak_exact = rows["code"].isin(per_code.loc[exact, "code"]).to_numpy()

    both_ways = pd.concat([pairs.rename(columns={"a": "code", "b": "other"}),
                           pairs.rename(columns={"b": "code", "a": "other"})], ignore_index=True)
    linked = both_ways.merge(per_code, on="code").merge(per_code.rename(columns={"code": "other", "split": "other_split"}),
                                                       on="other")
    crossing = linked[linked["split"] != linked["other_split"]].drop_duplicates(["code", "split"])
    flagged = rows.reset_index().merge(crossing, on=["code", "split"], how="left")
    flagged = flagged.sort_values("index")
    leak_near = flagged["other_split"].notna().to_numpy()
    partner = np.full(len(rows), None, dtype=object)
    partner[leak_near] = [f"{other_split}: {keys.texts[int(other)].as_py()[:80]!r} (Jaccard {j:.2f})"
                          for other_split, other, j in flagged.loc[leak_near, ["other_split", "other", "jaccard"]]
                          .itertuples(index=False)]
    return pd.DataFrame({"leak_exact": leak_exact, "leak_near": leak_near, "near_partner": partner})


def class_table(split: np.ndarray, labels: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """One row per split x class (zero-row combinations included): rows, share, share_delta vs overall."""
    records = []
    overall = np.bincount(labels, minlength=len(label_names)) / max(len(labels), 1)
    for name in SPLITS:
        in_split = labels[split == name]
        counts = np.bincount(in_split, minlength=len(label_names))
        shares = counts / max(len(in_split), 1)
        for i, label in enumerate(label_names):
            records.append({"split": name, "class": label, "rows": int(counts[i]), "share": float(shares[i]),
                            "overall_share": float(overall[i]), "share_delta": float(abs(shares[i] - overall[i]))})
    return pd.DataFrame(records)


def token_counts(texts: list[str], tokenizer_dir: str) -> np.ndarray:
    """Tokens per text with the model's own tokenizer, special tokens included, nothing truncated.

    Reads the fast tokenizer's tokenizer.json with the `tokenizers` library (no torch, no transformers);
    a model folder without one (a hub id, a slow-only tokenizer) goes through transformers instead.
    """
    tokenizer_file = Path(tokenizer_dir) / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_truncation()
        tokenizer.no_padding()

        def encode(chunk: list[str]) -> list[int]:
            return [len(e.ids) for e in tokenizer.encode_batch(chunk, add_special_tokens=True)]
    else:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        auto = AutoTokenizer.from_pretrained(tokenizer_dir)

        def encode(chunk: list[str]) -> list[int]:
            encoded = auto(chunk, add_special_tokens=True, truncation=False, return_attention_mask=False,
                           return_token_type_ids=False, verbose=False)
            return [len(ids) for ids in encoded["input_ids"]]
    counts: list[int] = []
    for start in range(0, len(texts), 10_000):  # bounded memory on large tables
        counts += encode(texts[start:start + 10_000])
    return np.asarray(counts, dtype=np.int64)


def truncated_in_training(tokens: np.ndarray, train: TrainConfig) -> np.ndarray:
    """Per row: training loses tokens of it. A text longer than train.max_length is cut to its head, unless
    train.long_text.train_windows cuts it into windows instead (read, as at inference, by the long_text rule)."""
    if train.long_text.train_windows:
        return np.zeros(len(tokens), dtype=bool)
    return tokens > train.max_length


def token_profile(split: np.ndarray, tokens: np.ndarray, truncated: np.ndarray,
                  max_length: int) -> list[dict[str, Any]]:
    """Token-length distribution per split and overall: rows longer than one window of max_length tokens (long),
    and the share training truncates."""
    table = []
    for name in (*SPLITS, "all"):
        chosen = np.ones(len(split), dtype=bool) if name == "all" else split == name
        values = tokens[chosen]
        if len(values):
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            long = int(np.count_nonzero(values > max_length))
            table.append({"split": name, "rows": len(values), "p50": float(p50), "p90": float(p90),
                          "p99": float(p99), "max": int(values.max()), "long_rows": long,
                          "long_share": long / len(values), "truncated_share": float(np.mean(truncated[chosen]))})
    return table


def long_text_summary(tokens: np.ndarray, truncated: np.ndarray, train: TrainConfig) -> dict[str, Any]:
    """How many rows are longer than one window, and how many of them training truncates."""
    long = int(np.count_nonzero(tokens > train.max_length))
    return {"window_tokens": train.max_length, "train_windows": train.long_text.train_windows, "long_rows": long,
            "long_share": long / len(tokens) if len(tokens) else 0.0,
            "truncated_rows": int(np.count_nonzero(truncated))}


def split_contract(frame: pd.DataFrame, keys: TextKeys, pairs: pd.DataFrame, cfg: PipelineConfig, root: Path,
                   tokenizer_dir: str | None) -> dict[str, Any]:
    """Check canonical rows (text, label index, split) against the split suite; the report of it.

    `pairs` are near-duplicate pairs over `keys`; tokenizer_dir None skips the token-length checks.
    """
    split, labels = frame["split"].to_numpy(), frame["label"].to_numpy()
    rows = pd.concat([frame[["split", "text"]].reset_index(drop=True),
                      pd.Series(np.asarray(cfg.data.label_names, dtype=object)[labels], name="label"),
                      leakage_table(split, keys, pairs)], axis=1)
    profile: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    spec = load_suite_spec(root / cfg.prepare.contract, {})
    if tokenizer_dir is None:
        spec = {**spec, "expectations": [e for e in spec["expectations"] if e["kwargs"].get("column") != "truncated"]}
    else:
        tokens = token_counts(frame["text"].tolist(), tokenizer_dir)
        truncated = truncated_in_training(tokens, cfg.train)
        rows["tokens"], rows["truncated"] = tokens, truncated.astype(float)
        reading = ("cut into windows in training" if cfg.train.long_text.train_windows
                   else "truncated in training")
        profile[f"Token lengths ({cfg.train.base_model}; long = above train.max_length = {cfg.train.max_length}, "
                f"{reading})"] = token_profile(split, tokens, truncated, cfg.train.max_length)
        extra["long_text"] = long_text_summary(tokens, truncated, cfg.train)
    classes = class_table(split, labels, cfg.data.label_names)
    profile["Rows per split and class"] = classes.to_dict("records")
    parameters = {"min_rows_per_class": cfg.prepare.min_rows_per_class,
                  "max_class_share_delta": cfg.prepare.max_class_share_delta,
                  "max_truncated_share": cfg.prepare.max_truncated_share}
    checks = run_suite({"rows": rows, "classes": classes}, spec, parameters, cfg.validate_.sample_bad_rows)
    if tokenizer_dir is not None:
        checks = [with_truncation_hint(c, tokens, cfg) for c in checks]
    return {**make_report(SUITE, len(rows), list(rows.columns), checks, profile), **extra}


def with_truncation_hint(check: dict[str, Any], tokens: np.ndarray, cfg: PipelineConfig) -> dict[str, Any]:
    """A failed truncated-share check with how many rows are cut and the settings that fix it."""
    if check["success"] or check["column"] != "truncated" or not len(tokens):
        return check
    cut = int(np.sum(tokens > cfg.train.max_length))
    p99 = int(np.ceil(np.percentile(tokens, 99)))
    return {**check, "hint": f"{cut} of {len(tokens)} rows are longer than train.max_length = {cfg.train.max_length} "
                             f"tokens (p99 {p99}) and training truncates them: set train.long_text.train_windows: "
                             f"true (long texts become windows), raise train.max_length (e.g. -S "
                             f"train.max_length={p99}) or prepare.max_truncated_share"}
