"""Data contracts: run a reviewed Great Expectations suite (expectations/*.json) on tables; report.

A suite is our own JSON: GX expectation configs plus `meta.severity` (error stops the pipeline,
warning is reported and carried on) and optional `meta.table` (which of the tables handed to
`run_suite` the expectation checks; default "rows"). Strings like "$text_column" are resolved to
column names before GX sees them; {"$PARAMETER": name} values are filled by GX from params.
"""

from __future__ import annotations

import json
import logging
import os
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import TunegateError
from tasks.io import read_json, write_json, write_text
from tasks.paths import ArtifactPaths

DEFAULT_TABLE = "rows"
# Aggregate checks list no bad rows; the duplicated values are their evidence.
UNIQUENESS_CHECKS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_column_values_to_be_unique")


class DataValidationError(TunegateError):
    """The data broke its contract; `report` holds every check with its evidence."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(render_markdown(report))


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


def sample_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts for a report (row number first, long texts shortened, helper columns hidden)."""
    return [{"row": int(i), **{str(k): _short(v) for k, v in row.items() if not str(k).startswith("__")}}
            for i, row in rows.iterrows()]


def _short(value: Any, limit: int = 120) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def plain_check(suite: str, name: str, severity: str, success: bool, *, column: str | None = None,
                observed: Any = None, error: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """A check computed outside GX (e.g. drift statistics), in the same record shape."""
    record = {"suite": suite, "expectation": name, "severity": severity, "column": column, "kwargs": kwargs,
              "success": success, "unexpected_count": None, "unexpected_percent": None, "observed_value": observed}
    if error:
        record["error"] = error
    return record


def make_report(suite: str, rows: int, columns: list[str], checks: list[dict[str, Any]],
                profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report: success unless an error-severity check failed; warnings counted apart."""
    failed = [c for c in checks if not c["success"]]
    errors = sum(c["severity"] == "error" for c in failed)
    return {"suite": suite, "success": errors == 0, "rows": rows, "columns": columns, "failed": errors,
            "warnings": len(failed) - errors, "checks": checks, "profile": profile or {}}


def merge_reports(first: dict[str, Any], *others: dict[str, Any]) -> dict[str, Any]:
    """One report from several contracts run on the same data (rows and columns from the first)."""
    merged = make_report(" + ".join(r["suite"] for r in (first, *others)), first["rows"], first["columns"],
                         [c for r in (first, *others) for c in r["checks"]],
                         {k: v for r in (first, *others) for k, v in r.get("profile", {}).items()})
    return {**{k: v for r in (first, *others) for k, v in r.items() if k not in merged}, **merged}


def unreadable_report(source: Path, error: Exception) -> dict[str, Any]:
    """A report for input that could not even be read as a table."""
    return make_report("read", 0, [], [plain_check("read", "readable_table", "error", False, error=str(error),
                                                   path=str(source))])


def verdict(report: dict[str, Any]) -> str:
    if not report["success"]:
        return f"FAILED ({report['failed']} of {len(report['checks'])} checks)"
    return "PASSED" + (f" with {report['warnings']} warning(s)" if report["warnings"] else "")


def outcome_word(check: dict[str, Any]) -> str:
    if check["success"]:
        return "pass"
    return "FAIL" if check["severity"] == "error" else "warn"


def evidence(check: dict[str, Any]) -> str:
    if check.get("error"):
        return f"error: {check['error']}".replace("|", "/")
    if check.get("unexpected_count"):
        return f"{check['unexpected_count']} bad rows ({check['unexpected_percent']:.2f}%)"
    if check.get("observed_value") is not None:
        return f"observed {_rounded(check['observed_value'])}".replace("|", "/")
    return ""


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: one line per check, then profile tables, then sample bad rows."""
    lines = [f"# Data contract: {verdict(report)}", "",
             f"Suite `{report['suite']}` on {report['rows']} rows; columns: {', '.join(report['columns']) or '-'}", "",
             "| contract | check | column | severity | result | evidence |", "|---|---|---|---|---|---|"]
    for check in report["checks"]:
        lines.append(f"| {check.get('suite', '')} | {check['expectation']} | {check['column'] or ''} | "
                     f"{check['severity']} | {outcome_word(check)} | {evidence(check)} |")
    for title, table in report.get("profile", {}).items():
        if table:
            header = list(table[0])
            lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(_rounded(row[h])) for h in header) + " |" for row in table]
    for check in report["checks"]:
        if check.get("sample_rows"):
            lines += ["", f"Sample bad rows for {check['expectation']} ({check['column']}):", ""]
            lines += [f"- {row}" for row in check["sample_rows"]]
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline style, no scripts, everything escaped)."""
    colours = {"pass": "#e6f4ea", "warn": "#fff4ce", "FAIL": "#fde7e9"}
    cells = ("suite", "expectation", "column", "severity")
    rows = "".join(
        f"<tr style='background:{colours[outcome_word(c)]}'>"
        + "".join(f"<td>{escape(str(c.get(k) or ''))}</td>" for k in cells)
        + f"<td>{outcome_word(c)}</td><td>{escape(evidence(c))}</td></tr>"
        for c in report["checks"])
    profile = "".join(
        f"<h2>{escape(title)}</h2><table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in table[0]) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{escape(str(_rounded(v)))}</td>" for v in row.values()) + "</tr>"
                  for row in table) + "</table>"
        for title, table in report.get("profile", {}).items() if table)
    samples = "".join(
        f"<h3>Sample bad rows: {escape(c['expectation'])} ({escape(str(c['column']))})</h3><ul>"
        + "".join(f"<li><code>{escape(json.dumps(r, ensure_ascii=False, default=str))}</code></li>"
                  for r in c["sample_rows"]) + "</ul>"
        for c in report["checks"] if c.get("sample_rows"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Data contract</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Data contract: {escape(verdict(report))}</h1>"
        f"<p>Suite <code>{escape(report['suite'])}</code> on {report['rows']} rows; columns: "
        f"{escape(', '.join(report['columns']) or '-')}</p>"
        "<table><tr><th>contract</th><th>check</th><th>column</th><th>severity</th><th>result</th>"
        f"<th>evidence</th></tr>{rows}</table>{profile}{samples}</body></html>\n")


def write_reports(folder: Path, report: dict[str, Any], stem: str = "report") -> None:
    """<stem>.json (machines), <stem>.md (people), <stem>.html (a page to share)."""
    write_json(folder / f"{stem}.json", report)
    write_text(folder / f"{stem}.md", render_markdown(report))
    write_text(folder / f"{stem}.html", render_html(report))


def write_failure_report(paths: ArtifactPaths, stage: str, report: dict[str, Any]) -> Path:
    """Write a failed contract's report beside, not over, the stage's last good output."""
    folder = paths.failed_dir(stage)
    write_reports(folder, report)
    return folder
