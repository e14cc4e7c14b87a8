"""Data contracts: run a reviewed Great Expectations suite (expectations/*.json) on tables.

A suite is our own JSON: GX expectation configs plus `meta.severity` (error stops the pipeline,
warning is reported and carried on) and optional `meta.table` (which of the tables handed to
`run_suite` the expectation checks; default "rows"). Strings like "$text_column" are resolved to
column names before GX sees them; {"$PARAMETER": name} values are filled by GX from params.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.contracts.report import sample_records
from tasks.core.io import read_json

DEFAULT_TABLE = "rows"
# Aggregate checks list no bad rows; the duplicated values are their evidence.
UNIQUENESS_CHECKS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_column_values_to_be_unique")


def load_suite_spec(path: Path, names: dict[str, str | None]) -> dict[str, Any]:
    """The suite at `path` with "$name" placeholders resolved; expectations on an unset name are dropped.

    (An optional column such as the split column is checked only when params name one.)
    """
    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            return names.get(value, value)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    spec = read_json(path)
    unset = {name for name, column in names.items() if column is None}
    kept = [e for e in spec["expectations"] if not unset & set(_strings(e["kwargs"]))]
    return resolve({**spec, "expectations": kept})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def run_suite(tables: dict[str, pd.DataFrame], spec: dict[str, Any], parameters: dict[str, Any],
              sample_rows: int) -> list[dict[str, Any]]:
    """Each expectation of the suite checked on its table in an ephemeral GX context: one record per check."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (5-7 s): only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs an INFO line per ephemeral context ("Created temporary directory ... docs site").
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("input")
    checks: list[dict[str, Any]] = []
    for table_name, frame in tables.items():
        expectations = [{k: v for k, v in e.items()} for e in spec["expectations"]
                        if (e.get("meta") or {}).get("table", DEFAULT_TABLE) == table_name]
        if not expectations:
            continue
        batch = source.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("whole")
        name = f"{spec['name']}.{table_name}"
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        outcome = definition.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                                 result_format={"result_format": "COMPLETE"})
        checks += [_check_record(r, frame, spec["name"], sample_rows) for r in outcome.results]
    return checks


def _check_record(result: Any, df: pd.DataFrame, suite: str, sample_rows: int) -> dict[str, Any]:
    config = result.expectation_config
    meta = config.meta or {}
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    record: dict[str, Any] = {
        "suite": suite,
        "expectation": config.type,
        "severity": meta.get("severity", "error"),
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(result.success),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": details.get("unexpected_percent"),
        "observed_value": _without_helpers(details.get("observed_value")),
    }
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        record["error"] = str(exception.get("exception_message")).splitlines()[0]
    bad_index = details.get("unexpected_index_list") or []
    if not result.success and config.type in UNIQUENESS_CHECKS and record["column"] in df.columns:
        bad_index = df.index[df[record["column"]].duplicated(keep=False)].tolist()
    if not result.success and bad_index and sample_rows:
        record["sample_rows"] = sample_records(df.loc[list(bad_index)[:sample_rows]])
    return record


def _without_helpers(observed: Any) -> Any:
    """An observed column list without the helper columns derived for the checks."""
    if isinstance(observed, list) and all(isinstance(v, str) for v in observed):
        return [v for v in observed if not v.startswith("__")]
    return observed
