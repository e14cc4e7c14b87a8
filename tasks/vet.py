"""Vet a data file before it goes into data/: every data contract the pipeline would apply to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.config import PipelineConfig
from tasks.contracts.report import make_report, merge_reports, plain_check, skipped_check, unreadable_report
from tasks.core.data import read_dataset
from tasks.core.io import DataFormatError
from tasks.prepare import PrepareError, checked_splits, to_canonical
from tasks.contracts.raw import raw_data_report

SPLIT_CHECK, SPLIT_NAME = "split_contract", "split contract"


def sources_of_this_file(df: Any, cfg: PipelineConfig) -> PipelineConfig:
    """prepare.sources and source_rows narrowed to the named sources this file holds: a new batch usually brings
    some of them (e.g. only Rotten Tomatoes rows); one holding none of them still fails as prepare would."""
    present = set(df[cfg.data.source_column].astype(str))
    sources = [s for s in cfg.prepare.sources if s in present] or cfg.prepare.sources
    rows = {s: n for s, n in cfg.prepare.source_rows.items() if s in sources}
    return cfg.model_copy(update={"prepare": cfg.prepare.model_copy(update={"sources": sources, "source_rows": rows})})


def vet_table(source: Path, root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Raw contract and drift; then, if the raw contract holds, the split and token-length contracts on the
    split prepare would make (or the one the data came with)."""
    try:
        df = read_dataset(source, cfg.data)
    except DataFormatError as exc:
        return unreadable_report(source, exc)
    raw = raw_data_report(df, root, cfg, source)
    if not raw["success"]:
        skipped = skipped_check("splits", SPLIT_CHECK, SPLIT_NAME, "the raw-data contract failed")
        return merge_reports(raw, make_report("splits", raw["rows"], raw["columns"], [skipped]))
    has_sources = cfg.data.source_column is not None and cfg.data.source_column in df.columns
    cfg = sources_of_this_file(df, cfg) if has_sources else cfg.model_copy(
        update={"prepare": cfg.prepare.model_copy(update={"sources": [], "source_rows": {}})})
    try:
        canonical = to_canonical(df, cfg.data, cfg.prepare.sources)
    except PrepareError as exc:  # e.g. prepare.sources names a source this file lacks
        failed = plain_check("splits", SPLIT_CHECK, "error", False, name=SPLIT_NAME, error=str(exc))
        return merge_reports(raw, make_report("splits", raw["rows"], raw["columns"], [failed]))
    _, splits_report, _, _ = checked_splits(canonical, cfg, root)
    return merge_reports(raw, splits_report)
