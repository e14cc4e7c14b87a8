"""The raw-data contract: the validate.suite GX suite on the input table, merged with drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tasks.contracts.drift import drift_report
from tasks.contracts.report import make_report, merge_reports, plain_check, unreadable_report
from tasks.contracts.suite import load_suite_spec, run_suite
from tasks.contracts.text import dictionary_encoded, is_missing, normalise_texts
from tasks.core.config import DataConfig, PipelineConfig, ValidateConfig
from tasks.core.data import SPLIT_ALIASES, load_dataset, split_files
from tasks.core.io import DataFormatError, file_sha256

# Columns computed before validation so GX's stock expectations can check them row by row.
DERIVED = {"$text_is_string": "__text_is_string", "$normalised_text": "__normalised_text_id",
           "$class_share": "__class_share"}
# A column with one of these names and only split-like values is probably a split assignment.
SPLIT_LIKE_NAMES = {"split", "splits", "fold", "set", "subset", "partition"}
SPLIT_LIKE_VALUES = {"train", "training", "dev", "development", "validation", "valid", "val", "test", "testing",
                     "eval", "evaluation", "holdout"}


def with_derived_columns(df: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """df as the suite checks it: nested values (lists, arrays, dicts) of the text and label columns as their
    str() so every check can run on them, plus the derived columns (only those whose source columns exist)."""
    derived = {}
    if data.text_column in df.columns:
        texts = df[data.text_column]
        if pd.api.types.is_string_dtype(texts) and not pd.api.types.is_object_dtype(texts):
            derived[DERIVED["$text_is_string"]] = True  # a str column holds only strings (and missing values)
        else:
            derived[DERIVED["$text_is_string"]] = texts.map(lambda v: isinstance(v, str) or is_missing(v))
        derived[data.text_column] = _flat(texts)
        # The id of each row's normalised text: equal ids = duplicates (ints count far faster than strings).
        ids = dictionary_encoded(normalise_texts(texts)).indices.to_numpy(zero_copy_only=False)
        derived[DERIVED["$normalised_text"]] = ids
    if data.label_column in df.columns:
        labels = _flat(df[data.label_column])
        derived[data.label_column] = labels
        derived[DERIVED["$class_share"]] = labels.map(labels.value_counts(normalize=True)).astype(float)
    return df.assign(**derived)


def _flat(column: pd.Series) -> pd.Series:
    """The column with nested values (not scalars: lists, arrays, dicts) replaced by their str()."""
    if not pd.api.types.is_object_dtype(column):
        return column
    nested = ~column.map(pd.api.types.is_scalar).astype(bool)
    return column.where(~nested, column[nested].map(str)) if nested.any() else column


def column_names(data: DataConfig) -> dict[str, str | None]:
    """What the suite's "$..." placeholders stand for."""
    return {"$text_column": data.text_column, "$label_column": data.label_column,
            "$split_column": data.split_column, **DERIVED}


def derived_sources(data: DataConfig) -> dict[str, str]:
    """Each derived column -> the user's column it is computed from (what a report names)."""
    return {DERIVED["$text_is_string"]: data.text_column, DERIVED["$normalised_text"]: data.text_column,
            DERIVED["$class_share"]: data.label_column}


def suite_parameters(cfg: ValidateConfig, data: DataConfig) -> dict[str, Any]:
    """Values for the suite's {"$PARAMETER": name} placeholders."""
    return {
        "labels": list(data.labels),
        "splits": list(SPLIT_ALIASES),
        "min_rows": cfg.min_rows,
        "max_rows": cfg.max_rows,
        "min_text_chars": cfg.min_text_chars,
        "max_text_chars": cfg.max_text_chars,
        "min_clean_share": cfg.min_clean_share,
        "min_unique_share": cfg.min_unique_share,
        "min_class_share": cfg.min_class_share,
        "max_class_share": cfg.max_class_share,
    }


def validate_table(root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Read the configured data and run the suite; never raises for bad data, only reports it.

    The report names the bytes it judged (`data_sha256`), so a later stage can tell whether it
    still speaks for the data on disk.
    """
    source = root / cfg.data.path
    try:
        df = load_dataset(root, cfg.data)
    except DataFormatError as exc:
        return unreadable_report(source, exc)
    return {**raw_data_report(df, root, cfg, source), "data_sha256": file_sha256(source)}


def raw_data_report(df: pd.DataFrame, root: Path, cfg: PipelineConfig, source: Path | None = None) -> dict[str, Any]:
    """The raw-data suite and drift against validate.drift_reference, as one report (`source`: where df was
    read from, for the checks on how the data arrived)."""
    return merge_reports(check_table(df, root, cfg, source), drift_report(df, root, cfg.data, cfg.validate_))


def check_table(df: pd.DataFrame, root: Path, cfg: PipelineConfig, source: Path | None = None) -> dict[str, Any]:
    """The raw-data suite (validate.suite) on an in-memory table, plus the ignored-split check."""
    spec = load_suite_spec(root / cfg.validate_.suite, column_names(cfg.data))
    checks = run_suite({"rows": with_derived_columns(df, cfg.data)}, spec, suite_parameters(cfg.validate_, cfg.data),
                       cfg.validate_.sample_bad_rows, derived_sources(cfg.data))
    checks = [name_missing_columns(c, df, cfg.data) for c in checks]
    if cfg.data.split_column is None:
        checks.append(ignored_split_check(df, source, spec["name"]))
    return make_report(spec["name"], len(df), [str(c) for c in df.columns], checks)


def name_missing_columns(check: dict[str, Any], df: pd.DataFrame, data: DataConfig) -> dict[str, Any]:
    """A failed column-set check with the missing columns named, and the setting to change when the data
    has a column of that name in other case or with spaces around it."""
    if check["success"] or check["expectation"] != "expect_table_columns_to_match_set":
        return check
    settings = {data.text_column: "data.text_column", data.label_column: "data.label_column"}
    missing = [c for c in check["kwargs"].get("column_set") or [] if c not in df.columns]
    hints = []
    for column in missing:
        setting = settings.get(column, "params")
        near = [str(c) for c in df.columns if str(c).strip().casefold() == column.strip().casefold()]
        hints.append(f"no column {column!r} ({setting})" + (
            f"; the data has {near[0]!r} (names are case-sensitive): set {setting}: {near[0]}" if near else ""))
    return {**check, "missing_columns": missing, "hint": "; ".join(hints)}


def split_like_columns(df: pd.DataFrame) -> list[str]:
    """Columns named like a split assignment (split, fold, set, partition...) holding only split-like values."""
    found = []
    for column in df.columns:
        if str(column).strip().casefold() not in SPLIT_LIKE_NAMES:
            continue
        values = {str(v).strip().casefold() for v in _flat(df[column]).dropna().unique()}
        if values and values <= SPLIT_LIKE_VALUES:
            found.append(str(column))
    return found


def ignored_split_check(df: pd.DataFrame, source: Path | None, suite: str) -> dict[str, Any]:
    """Warn when the data looks split (a split-like column, or train/validation/test files) while
    data.split_column is null: prepare would silently merge and re-split it."""
    columns = split_like_columns(df)
    files = split_files(source) if source is not None else []
    problems = []
    if columns:
        problems.append(f"column {columns[0]!r} looks like a split assignment but is ignored (data.split_column is "
                        f"null), so prepare re-splits the rows: to keep it, set data.split_column: {columns[0]} "
                        f"(-S data.split_column={columns[0]})")
    if len(files) > 1:
        problems.append(f"the files {', '.join(files)} are merged and re-split by prepare (data.split_column is "
                        "null): to keep their splits, set data.split_column: split (-S data.split_column=split)")
    return plain_check(suite, "split_assignment_not_ignored", "warning", not problems,
                       name="no split ignored", column=columns[0] if columns else None,
                       hint="; ".join(problems) or None, split_like_columns=columns, split_files=files)
