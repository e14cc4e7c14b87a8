"""Data contracts: run a reviewed Great Expectations suite (expectations/*.json) on tables.

A suite is our own JSON: GX expectation configs plus `meta.name` (the short name people read),
`meta.severity` (error stops the pipeline, warning is reported and carried on) and optional
`meta.table` (which of the tables handed to `run_suite` the expectation checks; default "rows").
Strings like "$text_column" are resolved to column names before GX sees them; {"$PARAMETER": name}
values are filled by GX from params. An expectation on a column the table lacks is not run: it is
reported as skipped, with the missing column named (never as a pass).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.contracts.report import sample_records, skipped_check
from tasks.core.io import read_json

DEFAULT_TABLE = "rows"
# Aggregate checks list no bad rows; the duplicated values are their evidence.
UNIQUENESS_CHECKS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_column_values_to_be_unique")
# Checks whose subject is whether a column exists: they run even when it does not.
EXISTENCE_CHECKS = ("expect_column_to_exist",)
EXAMPLE_VALUES = 3  # distinct bad values quoted in a failed check's evidence
POSITION = "tunegate_position"  # meta key: an expectation's place in its suite, to order the records


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
              sample_rows: int, sources: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each expectation of the suite checked on its table in an ephemeral GX context: one record per check,
    in suite order.

    `sources` maps a derived column to the user's column it is computed from: records name that column,
    and a check on a derived column that could not be computed says which column is missing.
    """
    sources = sources or {}
    records: dict[int, dict[str, Any]] = {}
    runnable: dict[str, list[dict[str, Any]]] = {}
    for position, expectation in enumerate(spec["expectations"]):
        table_name = (expectation.get("meta") or {}).get("table", DEFAULT_TABLE)
        missing = _missing_column(expectation, tables[table_name])
        if missing is None:  # tagged with its position: GX need not return results in suite order
            meta = {**(expectation.get("meta") or {}), POSITION: position}
            runnable.setdefault(table_name, []).append({**expectation, "meta": meta})
        else:
            column = sources.get(missing, missing)
            records[position] = skipped_check(spec["name"], expectation["type"], _name(expectation),
                                              f"column {column!r} is missing", column=column)
    results = _validate({name: tables[name] for name in runnable}, runnable, spec["name"], parameters)
    for table_name, result in results:
        record = _check_record(result, tables[table_name], spec["name"], sample_rows, parameters)
        if record["column"] in sources:  # a derived column's values (True/False, shares) mean nothing to users
            record = {k: v for k, v in record.items() if k not in ("unexpected_values", "allowed")}
        records[result.expectation_config.meta[POSITION]] = {
            **record, "column": sources.get(record["column"], record["column"])}
    return [records[i] for i in sorted(records)]


def _missing_column(expectation: dict[str, Any], frame: pd.DataFrame) -> str | None:
    """The first column the expectation reads that the table lacks (None: it can run)."""
    if expectation["type"] in EXISTENCE_CHECKS:
        return None
    kwargs = expectation["kwargs"]
    named = [kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)]
    named += [c for c in kwargs.get("column_list") or [] if isinstance(c, str)]
    return next((c for c in named if c not in frame.columns), None)


def _name(expectation: dict[str, Any]) -> str:
    return (expectation.get("meta") or {}).get("name") or expectation["type"]


def _validate(tables: dict[str, pd.DataFrame], expectations: dict[str, list[dict[str, Any]]], suite_name: str,
              parameters: dict[str, Any]) -> list[tuple[str, Any]]:
    """(table name, GX result) of each table's expectations, in one ephemeral GX context."""
    if not tables:
        return []
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (5-7 s): only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs an INFO line per ephemeral context ("Created temporary directory ... docs site").
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("input")
    results: list[tuple[str, Any]] = []
    for table_name, frame in tables.items():
        batch = (source.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("whole")
                 .get_batch(batch_parameters={"dataframe": frame}))
        # The suite is validated on the batch as it is, not added to the context's stores with a validation
        # definition: nothing reads those back, and storing them cost a few percent of each validation.
        suite = gx.ExpectationSuite(name=f"{suite_name}.{table_name}", expectations=expectations[table_name])
        outcome = batch.validate(suite, expectation_parameters=parameters, result_format={"result_format": "COMPLETE"})
        results += [(table_name, r) for r in outcome.results]
    return results


def _check_record(result: Any, df: pd.DataFrame, suite: str, sample_rows: int,
                  parameters: dict[str, Any]) -> dict[str, Any]:
    config = result.expectation_config
    meta = {k: v for k, v in (config.meta or {}).items() if k != POSITION}
    # Parameters resolved, so report.json shows the bounds a check ran with.
    kwargs = {k: _resolved(v, parameters) for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    record: dict[str, Any] = {
        "suite": suite,
        "expectation": config.type,
        "name": meta.get("name") or config.type,
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
    if not result.success:
        record.update(_failure_evidence(config.type, kwargs, details))
    bad_index = details.get("unexpected_index_list") or []
    if not result.success and config.type in UNIQUENESS_CHECKS and record["column"] in df.columns:
        bad_index = df.index[df[record["column"]].duplicated(keep=False)].tolist()
    if not result.success and bad_index and sample_rows:
        record["sample_rows"] = sample_records(df.loc[list(bad_index)[:sample_rows]])
    return record


def _failure_evidence(kind: str, kwargs: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """What a failed set check adds to its record: example bad values, the allowed ones, or the absent ones."""
    value_set = kwargs.get("value_set")
    if not isinstance(value_set, list):
        return {}
    if kind == "expect_column_distinct_values_to_contain_set":
        return {"missing_values": [_plain(v) for v in details.get("partial_missing_list") or []]}
    if kind == "expect_column_values_to_be_in_set":
        examples = list(dict.fromkeys(_plain(v) for v in details.get("partial_unexpected_list") or []))
        return {"unexpected_values": examples[:EXAMPLE_VALUES], "allowed": value_set}
    return {}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _resolved(value: Any, parameters: dict[str, Any]) -> Any:
    """A kwarg with {"$PARAMETER": name} replaced by the parameter's value."""
    if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
        return parameters.get(value["$PARAMETER"], value)
    return value


def _without_helpers(observed: Any) -> Any:
    """An observed column list without the helper columns derived for the checks."""
    if isinstance(observed, list) and all(isinstance(v, str) for v in observed):
        return [v for v in observed if not v.startswith("__")]
    return observed
