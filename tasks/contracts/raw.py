"""The raw-data contract: the validate.suite GX suite on the input table, merged with drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tasks.contracts.drift import drift_report
from tasks.contracts.report import make_report, merge_reports, unreadable_report
from tasks.contracts.suite import load_suite_spec, run_suite
from tasks.contracts.text import dictionary_encoded, normalise_texts
from tasks.core.config import DataConfig, PipelineConfig, ValidateConfig
from tasks.core.data import load_dataset
from tasks.core.io import DataFormatError, file_sha256

# Columns computed before validation so GX's stock expectations can check them row by row.
DERIVED = {"$text_is_string": "__text_is_string", "$normalised_text": "__normalised_text_id",
           "$class_share": "__class_share"}


def with_derived_columns(df: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """df plus the derived columns the suite names (only those whose source columns exist)."""
    derived = {}
    if data.text_column in df.columns:
        texts = df[data.text_column]
        if pd.api.types.is_string_dtype(texts) and not pd.api.types.is_object_dtype(texts):
            derived[DERIVED["$text_is_string"]] = True  # a str column holds only strings (and missing values)
        else:
            derived[DERIVED["$text_is_string"]] = texts.map(lambda v: isinstance(v, str) or bool(pd.isna(v)))
        # The id of each row's normalised text: equal ids = duplicates (ints count far faster than strings).
        ids = dictionary_encoded(normalise_texts(texts)).indices.to_numpy(zero_copy_only=False)
        derived[DERIVED["$normalised_text"]] = ids
    if data.label_column in df.columns:
        labels = df[data.label_column]
        derived[DERIVED["$class_share"]] = labels.map(labels.value_counts(normalize=True)).astype(float)
    return df.assign(**derived)


def column_names(data: DataConfig) -> dict[str, str | None]:
    """What the suite's "$..." placeholders stand for."""
    return {"$text_column": data.text_column, "$label_column": data.label_column,
            "$split_column": data.split_column, **DERIVED}


def suite_parameters(cfg: ValidateConfig, data: DataConfig) -> dict[str, Any]:
    """Values for the suite's {"$PARAMETER": name} placeholders."""
    return {
        "labels": list(data.labels),
        "splits": ["train", "dev", "test"],
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
    return {**raw_data_report(df, root, cfg), "data_sha256": file_sha256(source)}


def raw_data_report(df: pd.DataFrame, root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """The raw-data suite and drift against validate.drift_reference, as one report."""
    return merge_reports(check_table(df, root, cfg), drift_report(df, root, cfg.data, cfg.validate_))


def check_table(df: pd.DataFrame, root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """The raw-data suite (validate.suite) on an in-memory table."""
    spec = load_suite_spec(root / cfg.validate_.suite, column_names(cfg.data))
    checks = run_suite({"rows": with_derived_columns(df, cfg.data)}, spec, suite_parameters(cfg.validate_, cfg.data),
                       cfg.validate_.sample_bad_rows)
    return make_report(spec["name"], len(df), [str(c) for c in df.columns], checks)
