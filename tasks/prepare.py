"""prepare: seeded, stratified, leakage-free train/dev/test split of the validated data, contract-checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.config import DataConfig, PipelineConfig, PrepareConfig
from tasks.contracts.label_issues import (QUEUE_COLUMNS, detect, issue_table, noise_check, sentence_embeddings,
                                          skip_reason, skipped_noise_check)
from tasks.contracts.report import DataValidationError, make_report, write_failure_report, write_reports
from tasks.core.data import SPLIT_ALIASES, load_dataset
from tasks.core.errors import TunegateError
from tasks.core.io import staged_dir, write_json
from tasks.core.base_model import resolve_base_model
from tasks.core.paths import ArtifactPaths
from tasks.contracts.splits import SPLITS, SUITE, TextKeys, key_pairs, split_contract
from tasks.contracts.text import is_text
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.contracts.guard import require_validated


class PrepareError(TunegateError, ValueError):
    """The data cannot be split as configured (unknown source, empty split...)."""


# Each canonical row's data.source_column value (as a string), when the data has that column: prepare.source_rows
# caps sources by it and several sources are split one by one. Internal: never written to the splits.
SOURCE = "data_source"
# Columns prepare (text, label, split, code, data_source) and the gate's slicing (tokens, predicted) make themselves:
# a carried slice column of one of these names would overwrite them.
RESERVED_COLUMNS = ("text", "label", "split", "code", SOURCE, "tokens", "predicted")
# A carried value that is missing (null, NaN) becomes this string: its rows stay a slice of their own.
MISSING_VALUE = "(missing)"


def to_canonical(df: pd.DataFrame, data: DataConfig, sources: list[str],
                 carry: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of the wanted sources as columns `text` (str), `label` (index into data.labels), for
    pre-split data `split` (train/dev/test; validation and valid mean dev), each raw column named in
    `carry` (gate.slice_columns) under its own name, as strings (missing values as MISSING_VALUE), and
    SOURCE (data.source_column as strings) when the data has that column.

    Data the raw contract would refuse (a missing column, a label outside data.labels, a text that is not a
    string, an unknown split) or a carried column the data lacks raises PrepareError naming the problem.
    """
    for setting, column in (("data.text_column", data.text_column), ("data.label_column", data.label_column),
                            ("data.split_column", data.split_column)):
        if column is not None and column not in df.columns:
            raise PrepareError(f"{setting} {column!r} is not a column of the data (columns: "
                               f"{', '.join(map(str, df.columns))})")
    _require_carried(df, carry)
    if sources:
        if data.source_column is None or data.source_column not in df.columns:
            raise PrepareError("prepare.sources is set but data.source_column is missing from the data")
        unknown = sorted(set(sources) - set(df[data.source_column].astype(str)))
        if unknown:
            raise PrepareError(f"prepare.sources names sources absent from the data: {unknown}")
        df = df[df[data.source_column].astype(str).isin(sources)]
    label_index = {value: i for i, value in enumerate(data.labels)}
    labels = _lookup(df[data.label_column], label_index)
    _refuse(df[data.label_column], labels.isna(), f"not in data.labels {list(data.labels)}")
    texts = df[data.text_column]
    _refuse(texts, ~is_text(texts), "texts that are not strings")
    canonical = pd.DataFrame({"text": texts.to_numpy(dtype=object), "label": labels.astype("int64").to_numpy()})
    if data.split_column is not None:
        split = _lookup(df[data.split_column], SPLIT_ALIASES)
        _refuse(df[data.split_column], split.isna(), f"splits other than {', '.join(SPLIT_ALIASES)}")
        canonical["split"] = split.to_numpy(dtype=object)
    for column in carry:
        canonical[column] = as_slice_values(df[column]).to_numpy(dtype=object)
    if data.source_column is not None and data.source_column in df.columns:
        canonical[SOURCE] = df[data.source_column].astype(str).to_numpy(dtype=object)
    return canonical


def _require_carried(df: pd.DataFrame, carry: Sequence[str]) -> None:
    """Refuse slice columns the data lacks or that would overwrite a column prepare or the gate makes."""
    clashing = [c for c in carry if c in RESERVED_COLUMNS]
    if clashing:
        raise PrepareError(f"gate.slice_columns {clashing} clash with the columns prepare and the gate make "
                           f"({', '.join(RESERVED_COLUMNS)}): rename the data's column or drop it from "
                           "gate.slice_columns")
    absent = [c for c in carry if c not in df.columns]
    if absent:
        raise PrepareError(f"gate.slice_columns names {absent}, not columns of the data (columns: "
                           f"{', '.join(map(str, df.columns))}): set gate.slice_columns to some of them, or []")


def as_slice_values(column: pd.Series) -> pd.Series:
    """A raw column as strings, one slice per distinct value: missing values become MISSING_VALUE."""
    return column.map(lambda v: MISSING_VALUE if pd.api.types.is_scalar(v) and pd.isna(v) else str(v))


def _lookup(column: pd.Series, mapping: dict) -> pd.Series:
    """Each value's entry in `mapping`; NaN where it has none (missing, unknown or nested values)."""
    if not pd.api.types.is_object_dtype(column):
        return column.map(mapping)  # vectorised; a typed column holds no nested values
    return column.map(lambda v: mapping.get(v) if pd.api.types.is_scalar(v) and not pd.isna(v) else None)


def _refuse(values: pd.Series, bad: pd.Series, what: str) -> None:
    """Raise PrepareError when any row is bad, with the count and a few distinct example values."""
    if bad.any():
        examples = list(dict.fromkeys(repr(v) for v in values[bad.to_numpy()].head(100)))[:5]
        raise PrepareError(f"{int(bad.sum())} row(s) of column {values.name!r} hold {what}: e.g. "
                           f"{', '.join(examples)} (`tunegate validate` reports every such row)")


def near_duplicate_groups(keys: TextKeys, pairs: pd.DataFrame) -> np.ndarray:
    """Per distinct text, its group: the smallest code among the texts it is linked to by near-duplicate pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(keys.texts)
    graph = coo_matrix((np.ones(len(pairs)), (pairs["a"].to_numpy(), pairs["b"].to_numpy())), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def split_frame(df: pd.DataFrame, keys: TextKeys, pairs: pd.DataFrame, cfg: PrepareConfig,
                seed: int) -> tuple[np.ndarray, dict]:
    """Each row's split ('' when dropped): stratified by label, and every group of identical or
    near-duplicate texts (Jaccard >= prepare.near_duplicate_jaccard) kept within one split.

    Rows whose identical normalised text carries different labels are dropped (they cannot be
    learned from). Returns the split per row and counts of what was dropped or grouped.
    """
    labels = df["label"].to_numpy()
    n_texts, n_labels = len(keys.texts), int(labels.max(initial=0)) + 1
    # A text is conflicting when its rows disagree on the label (lowest != highest label).
    lowest, highest = np.full(n_texts, n_labels), np.full(n_texts, -1)
    np.minimum.at(lowest, keys.codes, labels)
    np.maximum.at(highest, keys.codes, labels)
    conflicting = (lowest != highest)[keys.codes]
    kept_codes, kept_labels = keys.codes[~conflicting], labels[~conflicting]
    group_of_text = near_duplicate_groups(keys, pairs)
    # Groups numbered 0.. in text order; a group's label for stratification is its most frequent one.
    present_groups, group_index = np.unique(group_of_text[kept_codes], return_inverse=True)
    per_label = np.bincount(group_index * n_labels + kept_labels,
                            minlength=len(present_groups) * n_labels).reshape(-1, n_labels)
    group_label = per_label.argmax(axis=1)  # ties go to the lowest label

    rng = np.random.default_rng(seed)
    split_of_group = np.full(len(present_groups), len(SPLITS))  # index into SPLITS; len(SPLITS) = none
    for label in np.unique(group_label):
        members = np.flatnonzero(group_label == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(cfg.test_fraction * len(members)))
        n_dev = int(round(cfg.dev_fraction * len(members)))
        for i, chunk in enumerate(np.split(members, [len(members) - n_dev - n_test, len(members) - n_test])):
            split_of_group[chunk] = i
    split = np.full(len(df), "", dtype=object)
    split[~conflicting] = np.array(SPLITS, dtype=object)[split_of_group[group_index]]
    distinct = int(np.count_nonzero(np.bincount(kept_codes, minlength=n_texts)))
    dropped = {"conflicting_label_rows": int(conflicting.sum()),
               "duplicate_rows": int(len(kept_codes) - distinct),
               "near_duplicate_pairs": len(pairs),
               "near_duplicate_rows_grouped": int(distinct - len(present_groups))}
    return split, dropped


def stratified_sample(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `limit` rows keeping each label's share (floor of it per label), rows grouped by
    label and keeping their index; `df` itself when it has no more rows than that."""
    if len(df) <= limit:
        return df
    share = limit / len(df)
    return pd.concat([group.sample(n=int(np.floor(len(group) * share)), random_state=seed)
                      for _, group in df.groupby("label")])


def split_by_source(df: pd.DataFrame, keys: TextKeys, pairs: pd.DataFrame, cfg: PrepareConfig,
                    seed: int) -> tuple[np.ndarray, dict, pd.DataFrame]:
    """split_frame on each source's rows alone (sources in sorted order, each from a fresh rng(seed)), so adding a
    source leaves the others' splits as they were; then each group of identical or near-duplicate texts that spans
    sources joins the split of its first row (first source, then text order), and texts whose rows disagree on the
    label across sources are dropped. Returns the split per row, the counts, and the near-duplicate pairs over
    `keys` found within each source or across them (`pairs`): the ones no split may separate.
    """
    source = df[SOURCE].to_numpy()
    names = sorted(set(source))
    split = np.full(len(df), "", dtype=object)
    found = [pairs]
    for name in names:
        rows = source == name
        # The source's own keys and pairs: exactly what a run on this source alone computes (its near-duplicate
        # search hashes words per call, so the pairs it finds can depend on the other texts present).
        own = TextKeys.of(df.loc[rows, "text"])
        own_pairs = key_pairs(own, cfg, seed)
        split[rows], _ = split_frame(df[rows], own, own_pairs, cfg, seed)
        global_code = np.empty(len(own.texts), dtype=np.int64)
        global_code[own.codes] = keys.codes[rows]  # sorted texts of a subset keep their order: a < b stays so
        found.append(own_pairs.assign(a=global_code[own_pairs["a"].to_numpy()],
                                      b=global_code[own_pairs["b"].to_numpy()]))
    every_pair = pd.concat(found, ignore_index=True).drop_duplicates(["a", "b"]).reset_index(drop=True)
    group = near_duplicate_groups(keys, every_pair)[keys.codes]  # per row, over all sources
    place = {name: i for i, name in enumerate(names)}
    rank = np.array([place[name] for name in source.tolist()], dtype=np.int64)  # per row: its source's place
    united = _join_first_split(split, group, rank, keys.codes)
    labels = df["label"].to_numpy()
    united[_conflicting(keys.codes, labels, len(keys.texts))] = ""
    kept = united != ""
    kept_codes = np.unique(keys.codes[kept])
    dropped = {"conflicting_label_rows": int(np.count_nonzero(~kept)),
               "duplicate_rows": int(np.count_nonzero(kept) - len(kept_codes)),
               "near_duplicate_pairs": len(every_pair),
               "near_duplicate_rows_grouped": int(len(kept_codes) - len(np.unique(group[kept]))),
               "rows_moved_to_a_group_in_another_source": int(np.count_nonzero(kept & (united != split)))}
    return united, dropped, every_pair


def _join_first_split(split: np.ndarray, group: np.ndarray, rank: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each kept row's split replaced by the split of its group's first kept row (lowest source rank, then code)."""
    kept = split != ""
    rows = pd.DataFrame({"group": group, "rank": rank, "code": codes, "split": split})[kept]
    first = rows.sort_values(["rank", "code"], kind="stable").drop_duplicates("group")
    leader = dict(zip(first["group"].tolist(), first["split"].tolist()))
    united = split.copy()
    united[kept] = [leader[g] for g in group[kept].tolist()]
    return united


def _conflicting(codes: np.ndarray, labels: np.ndarray, n_texts: int) -> np.ndarray:
    """Per row: its text's rows disagree on the label (lowest != highest)."""
    lowest, highest = np.full(n_texts, np.iinfo(np.int64).max), np.full(n_texts, -1)
    np.minimum.at(lowest, codes, labels)
    np.maximum.at(highest, codes, labels)
    return (lowest != highest)[codes]


def cap_rows(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified, seeded subsample of at most `limit` rows (all rows when under it), shuffled."""
    capped = df if limit is None else stratified_sample(df, limit, seed)
    return capped.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def cap_sources(frame: pd.DataFrame, source_rows: dict[str, int], sources: list[str], seed: int) -> pd.DataFrame:
    """Canonical rows with each source named in `source_rows` (prepare.source_rows) cut to a stratified, seeded
    sample of at most that many rows; every other row kept, all in their order. Drawn before splitting."""
    if not source_rows:
        return frame
    if SOURCE not in frame.columns:
        raise PrepareError("prepare.source_rows caps rows per data.source_column, which is unset or not a column "
                           "of the data: set data.source_column, or prepare.source_rows: {}")
    named = sorted(source_rows)
    outside = [name for name in named if sources and name not in sources]
    if outside:
        raise PrepareError(f"prepare.source_rows names {outside}, not in prepare.sources {sources}: add them to "
                           "prepare.sources or remove them from prepare.source_rows")
    present = set(frame[SOURCE])
    absent = [name for name in named if name not in present]
    if absent:
        raise PrepareError(f"prepare.source_rows names sources absent from the data: {absent} (sources in "
                           f"the data: {sorted(present)})")
    rows = frame.reset_index(drop=True)
    keep = np.ones(len(rows), dtype=bool)
    for name in named:
        of_source = rows[rows[SOURCE] == name]
        keep[of_source.index] = False
        keep[stratified_sample(of_source, source_rows[name], seed).index] = True
    return rows[keep].reset_index(drop=True)


def split_stats(splits: dict[str, pd.DataFrame], data: DataConfig) -> dict:
    """Per split: rows, rows per class, mean characters, and rows per source when the rows carry SOURCE."""
    return {
        name: {
            "rows": len(frame),
            "per_class": {data.label_names[i]: int((frame["label"] == i).sum()) for i in range(len(data.labels))},
            "mean_chars": round(float(frame["text"].str.len().mean()), 1) if len(frame) else 0.0,
            **({"per_source": {str(k): int(v) for k, v in sorted(frame[SOURCE].value_counts().items())}}
               if SOURCE in frame.columns else {}),
        }
        for name, frame in splits.items()
    }


def make_splits(frame: pd.DataFrame, cfg: PipelineConfig) -> tuple[pd.DataFrame, TextKeys, pd.DataFrame, dict]:
    """Canonical rows, capped per source (prepare.source_rows), with a `split` column (prepare's own split, each
    source split on its own when there are several, or the one the data came with), capped per split; plus their
    text keys, the near-duplicate pairs over them, and what was dropped."""
    frame = cap_sources(frame, cfg.prepare.source_rows, cfg.prepare.sources, cfg.seed)
    keys = TextKeys.of(frame["text"])
    pairs = key_pairs(keys, cfg.prepare, cfg.seed)
    if "split" in frame.columns:  # pre-split data: kept as given, and checked like our own split
        dropped: dict = {"pre_split": True}
        split = frame["split"].to_numpy()
    elif SOURCE in frame.columns and frame[SOURCE].nunique() > 1:
        split, dropped, pairs = split_by_source(frame, keys, pairs, cfg.prepare, cfg.seed)
    else:
        split, dropped = split_frame(frame, keys, pairs, cfg.prepare, cfg.seed)
    frame = frame.assign(split=split, code=keys.codes)
    limits = {"train": cfg.prepare.max_train_rows, "dev": cfg.prepare.max_dev_rows, "test": cfg.prepare.max_test_rows}
    frame = pd.concat([cap_rows(frame[frame["split"] == name], limits[name], cfg.seed) for name in SPLITS],
                      ignore_index=True)
    return frame, TextKeys(codes=frame["code"].to_numpy(), texts=keys.texts), pairs, dropped


def label_noise(frame: pd.DataFrame, cfg: PipelineConfig, model_dir: str) -> tuple[dict | None, pd.DataFrame]:
    """The estimated-label-noise check on the train rows alone (dev and test are never read to choose anything) and
    its queue (QUEUE_COLUMNS, most suspect first); no check and an empty queue when prepare.label_issues is off.
    model_dir: the resolved train.base_model, the encoder of prepare.label_issues.features = embeddings."""
    settings = cfg.prepare.label_issues
    empty = pd.DataFrame(columns=list(QUEUE_COLUMNS))
    if not settings.enabled:
        return None, empty
    train = frame[frame["split"] == "train"]
    texts, labels = train["text"].tolist(), train["label"].to_numpy()
    reason = skip_reason(labels, len(cfg.data.labels), settings.folds)
    if reason:
        return skipped_noise_check(SUITE, reason), empty
    # The base model the run fine-tunes embeds the rows: its view of the texts is the one training starts from.
    embeddings = sentence_embeddings(texts, model_dir) if settings.features == "embeddings" else None
    issues = detect(texts, labels, len(cfg.data.labels), settings.folds, cfg.seed, embeddings)
    queue = pd.DataFrame(issue_table(texts, labels, issues, cfg.data.label_names), columns=list(QUEUE_COLUMNS))
    return noise_check(SUITE, issues, settings.max_noisy_share, settings.severity), queue


def with_check(report: dict, check: dict | None) -> dict:
    """`report` with one more check, its verdict and counts recomputed (its other keys kept)."""
    if check is None:
        return report
    return {**report, **make_report(report["suite"], report["rows"], report["columns"], [*report["checks"], check],
                                    report["profile"])}


def checked_splits(canonical: pd.DataFrame, cfg: PipelineConfig,
                   root: Path) -> tuple[pd.DataFrame, dict, dict, pd.DataFrame]:
    """make_splits, then the split and token-length contract on them and the label-noise check on the train rows:
    (rows with `split`, report, dropped, label-issue queue of the train rows)."""
    frame, keys, pairs, dropped = make_splits(canonical, cfg)
    tokenizer_dir, _ = resolve_base_model(cfg.train.base_model, root)
    report = split_contract(frame, keys, pairs, cfg, root, tokenizer_dir)
    check, queue = label_noise(frame, cfg, tokenizer_dir)
    return frame, with_check(report, check), dropped, queue


@stage_task("prepare")
def prepare(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Split the validated data, check the split contract (label noise of the train split included), then write
    train/dev/test Parquet (text, label and the gate.slice_columns), stats, the report and the train split's
    label-issue queue (label_issues.csv).

    A failed contract writes nothing under artifacts/prepare (its report goes to artifacts/_failed/prepare).
    """
    require_validated(paths, paths.root / cfg.data.path)
    carried = cfg.gate.slice_columns  # the gate slices the test split by these
    canonical = to_canonical(load_dataset(paths.root, cfg.data), cfg.data, cfg.prepare.sources, carried)
    frame, report, dropped, queue = checked_splits(canonical, cfg, paths.root)
    if not report["success"]:
        folder = write_failure_report(paths, "prepare", report)
        raise DataValidationError(report, where=folder / "report.md")
    in_split = {name: frame[frame["split"] == name].reset_index(drop=True) for name in SPLITS}
    splits = {name: rows[["text", "label", *carried]] for name, rows in in_split.items()}
    stats = {"sources": cfg.prepare.sources or "all", "source_rows": cfg.prepare.source_rows, "dropped": dropped,
             "long_text": report.get("long_text"), "splits": split_stats(in_split, cfg.data)}
    key = " / ".join(f"{len(splits[n])}" for n in SPLITS) + " rows (train/dev/test)"
    with staged_dir(paths.stage_dir("prepare")) as out:
        for name, split in splits.items():
            split.to_parquet(out / f"{name}.parquet", index=False)
        write_json(out / "stats.json", stats)
        queue.to_csv(out / "label_issues.csv", index=False)
        write_reports(out, report, stem="contract")
        return write_result(out, StageResult(stage="prepare", key_figure=key, contract_warnings=report["warnings"]))
