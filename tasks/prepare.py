"""prepare: seeded, stratified, leakage-free train/dev/test split of the validated data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.config import DataConfig, PipelineConfig, PrepareConfig
from tasks.data import load_dataset
from tasks.io import staged_dir, write_json
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, stage_task, write_result
from tasks.text import normalise_text
from tasks.validate import require_validated
from tasks.errors import TunegateError

SPLITS = ("train", "dev", "test")


class PrepareError(TunegateError, ValueError):
    """The data cannot be split as configured (unknown source, empty split...)."""


def to_canonical(df: pd.DataFrame, data: DataConfig, sources: list[str]) -> pd.DataFrame:
    """Rows of the wanted sources as columns `text` (str) and `label` (index into data.labels)."""
    if sources:
        if data.source_column is None or data.source_column not in df.columns:
            raise PrepareError("prepare.sources is set but data.source_column is missing from the data")
        unknown = sorted(set(sources) - set(df[data.source_column].astype(str)))
        if unknown:
            raise PrepareError(f"prepare.sources names sources absent from the data: {unknown}")
        df = df[df[data.source_column].astype(str).isin(sources)]
    label_index = {value: i for i, value in enumerate(data.labels)}
    return pd.DataFrame({
        "text": df[data.text_column].astype(str).to_numpy(),
        "label": df[data.label_column].map(label_index).astype("int64").to_numpy(),
    })


def split_frame(df: pd.DataFrame, cfg: PrepareConfig, seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split rows so all rows sharing a normalised text land in one split, stratified by label.

    Groups whose rows disagree on the label are dropped (they cannot be learned from).
    Returns the splits and counts of what was dropped.
    """
    keys = df["text"].map(normalise_text)
    labels_per_key = df.groupby(keys)["label"].nunique()
    conflicting = set(labels_per_key[labels_per_key > 1].index)
    keep = ~keys.isin(conflicting)
    df, keys = df[keep], keys[keep]
    group_label = df.groupby(keys)["label"].first()

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        members = np.array(sorted(group_label.index[group_label == label]), dtype=object)
        members = members[rng.permutation(len(members))]
        n_test = int(round(cfg.test_fraction * len(members)))
        n_dev = int(round(cfg.dev_fraction * len(members)))
        for split, chunk in zip(SPLITS, np.split(members, [len(members) - n_dev - n_test, len(members) - n_test])):
            assignment.update(dict.fromkeys(chunk, split))
    split_of_row = keys.map(assignment)
    splits = {name: df[split_of_row == name].reset_index(drop=True) for name in SPLITS}
    dropped = {"conflicting_label_rows": int((~keep).sum()),
               "duplicate_rows": int(len(df) - keys.nunique())}
    return splits, dropped


def cap_rows(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified, seeded subsample of at most `limit` rows (all rows when under it)."""
    if limit is None or len(df) <= limit:
        return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    share = limit / len(df)
    parts = [group.sample(n=int(np.floor(len(group) * share)), random_state=seed)
             for _, group in df.groupby("label")]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split_stats(splits: dict[str, pd.DataFrame], data: DataConfig) -> dict:
    return {
        name: {
            "rows": len(frame),
            "per_class": {data.label_names[i]: int((frame["label"] == i).sum()) for i in range(len(data.labels))},
            "mean_chars": round(float(frame["text"].str.len().mean()), 1) if len(frame) else 0.0,
        }
        for name, frame in splits.items()
    }


@stage_task("prepare")
def prepare(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Write train/dev/test Parquet and stats.json from the validated data."""
    require_validated(paths, paths.root / cfg.data.path)
    frame = to_canonical(load_dataset(paths.root, cfg.data), cfg.data, cfg.prepare.sources)
    splits, dropped = split_frame(frame, cfg.prepare, cfg.seed)
    limits = {"train": cfg.prepare.max_train_rows, "dev": cfg.prepare.max_dev_rows, "test": cfg.prepare.max_test_rows}
    splits = {name: cap_rows(splits[name], limits[name], cfg.seed) for name in SPLITS}
    for name, split in splits.items():
        missing = set(range(len(cfg.data.labels))) - set(split["label"])
        if missing:
            raise PrepareError(f"split {name!r} has no rows of classes "
                               f"{[cfg.data.label_names[i] for i in sorted(missing)]}: more data or larger fractions needed")
    stats = {"sources": cfg.prepare.sources or "all", "dropped": dropped, "splits": split_stats(splits, cfg.data)}
    key = " / ".join(f"{len(splits[n])}" for n in SPLITS) + " rows (train/dev/test)"
    with staged_dir(paths.stage_dir("prepare")) as out:
        for name, split in splits.items():
            split.to_parquet(out / f"{name}.parquet", index=False)
        write_json(out / "stats.json", stats)
        return write_result(out, StageResult(stage="prepare", key_figure=key))
