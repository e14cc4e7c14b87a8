"""Contract reports: one record per check (GX or computed), the verdict, and JSON/Markdown/HTML renderings."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.errors import TunegateError
from tasks.core.io import write_json, write_text
from tasks.core.paths import ArtifactPaths


class DataValidationError(TunegateError):
    """The data broke its contract; `report` holds every check with its evidence (the message: a summary)."""

    def __init__(self, report: dict[str, Any], where: Path | None = None):
        self.report = report
        super().__init__(summary(report) + (f"\nfull report: {where}" if where else ""))


def sample_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts for a report (row number first, long texts shortened, helper columns hidden)."""
    return [{"row": int(i), **{str(k): _short(v) for k, v in row.items() if not str(k).startswith("__")}}
            for i, row in rows.iterrows()]


def _short(value: Any, limit: int = 120) -> Any:
    """A cell as a plain JSON-able value: long texts cut, missing values None, arrays as lists."""
    if isinstance(value, np.ndarray):  # nested Parquet values (lists) arrive as arrays
        value = value.tolist()
    if isinstance(value, (list, dict)):
        value = str(value)
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def plain_check(suite: str, expectation: str, severity: str, success: bool, *, name: str | None = None,
                column: str | None = None, observed: Any = None, error: str | None = None, hint: str | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """A check computed outside GX (e.g. drift statistics), in the same record shape.

    `expectation` is its machine id (stable, in report.json); `name` the short human name people read;
    `hint` what to do about a failure.
    """
    record = {"suite": suite, "expectation": expectation, "name": name or expectation, "severity": severity,
              "column": column, "kwargs": kwargs, "success": success, "unexpected_count": None,
              "unexpected_percent": None, "observed_value": observed}
    if error:
        record["error"] = error
    if hint:
        record["hint"] = hint
    return record


def skipped_check(suite: str, expectation: str, name: str, reason: str, *, column: str | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """A check that could not run on this data: a warning naming why, never a silent pass."""
    record = plain_check(suite, expectation, "warning", False, name=name, column=column,
                         error=f"not run: {reason}", **kwargs)
    return {**record, "skipped": True}


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
    return make_report("read", 0, [], [plain_check("read", "readable_table", "error", False, name="table readable",
                                                   error=str(error), path=str(source))])


def verdict(report: dict[str, Any]) -> str:
    if not report["success"]:
        return f"FAILED ({report['failed']} of {len(report['checks'])} checks)"
    return "PASSED" + (f" with {report['warnings']} warning(s)" if report["warnings"] else "")


def check_name(check: dict[str, Any]) -> str:
    """The short human name of a check (its machine id for records written before names existed)."""
    return check.get("name") or check["expectation"]


def summary(report: dict[str, Any], limit: int = 200) -> str:
    """Verdict and one line per failed error-severity check (name, column, evidence): what a user reads first."""
    lines = [f"data contract {verdict(report)}"]
    for check in report["checks"]:
        if not check["success"] and check["severity"] == "error":
            said = evidence(check)
            said = said if len(said) <= limit else said[:limit] + "..."
            column = f" [{check['column']}]" if check.get("column") else ""
            lines.append(f"  - {check_name(check)}{column}" + (f": {said}" if said else ""))
    return "\n".join(lines)


def outcome_word(check: dict[str, Any]) -> str:
    if check["success"]:
        return "pass"
    if check.get("skipped"):
        return "skip"
    return "FAIL" if check["severity"] == "error" else "warn"


def evidence(check: dict[str, Any]) -> str:
    """What a check saw, in a few words: its error, bad rows (with example values and what is allowed),
    or the observed figure with its bounds; then its hint."""
    if check.get("error"):
        said = check["error"] if check.get("skipped") else f"error: {check['error']}"
    elif check.get("unexpected_count"):
        said = f"{check['unexpected_count']} bad rows ({check['unexpected_percent']:.2f}%)"
        if check.get("unexpected_values"):
            said += ", e.g. " + ", ".join(_example(v) for v in check["unexpected_values"])
    elif check.get("missing_values"):
        said = "no rows of " + ", ".join(_example(v) for v in check["missing_values"])
    elif check.get("observed_value") is not None:
        said = f"observed {_rounded(check['observed_value'])}" + _bounds(check.get("kwargs") or {})
    else:
        said = ""
    if not check["success"] and check.get("allowed") is not None:
        said += "; allowed: " + ", ".join(_example(v) for v in check["allowed"])
    if not check["success"] and check.get("hint"):
        said += ("; " if said else "") + check["hint"]
    return said.replace("|", "/")


def _example(value: Any, limit: int = 24) -> str:
    said = repr(value)
    return said if len(said) <= limit else said[:limit] + "..."


def _bounds(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    numeric = [v for v in (low, high) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numeric:
        return ""
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f" (bounds {_rounded(low)}..{_rounded(high)})"
    return f" (at least {_rounded(low)})" if isinstance(low, (int, float)) else f" (at most {_rounded(high)})"


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: one line per check, then profile tables, then sample bad rows."""
    lines = [f"# Data contract: {verdict(report)}", "",
             f"Suite `{report['suite']}` on {report['rows']} rows; columns: {', '.join(report['columns']) or '-'}", "",
             "| contract | check | expectation | column | severity | result | evidence |",
             "|---|---|---|---|---|---|---|"]
    for check in report["checks"]:
        lines.append(f"| {check.get('suite', '')} | {check_name(check)} | `{check['expectation']}` | "
                     f"{check['column'] or ''} | {check['severity']} | {outcome_word(check)} | {evidence(check)} |")
    for title, table in report.get("profile", {}).items():
        if table:
            header = list(table[0])
            lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(_rounded(row[h])) for h in header) + " |" for row in table]
    for check in report["checks"]:
        if check.get("sample_rows"):
            lines += ["", f"Sample bad rows for {check_name(check)} (`{check['expectation']}`, {check['column']}):", ""]
            lines += [f"- {row}" for row in check["sample_rows"]]
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline style, no scripts, everything escaped)."""
    colours = {"pass": "#e6f4ea", "warn": "#fff4ce", "skip": "#fff4ce", "FAIL": "#fde7e9"}
    cells = ("suite", "name", "expectation", "column", "severity")
    rows = "".join(
        f"<tr style='background:{colours[outcome_word(c)]}'>"
        + "".join(f"<td>{escape(str((check_name(c) if k == 'name' else c.get(k)) or ''))}</td>" for k in cells)
        + f"<td>{outcome_word(c)}</td><td>{escape(evidence(c))}</td></tr>"
        for c in report["checks"])
    profile = "".join(
        f"<h2>{escape(title)}</h2><table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in table[0]) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{escape(str(_rounded(v)))}</td>" for v in row.values()) + "</tr>"
                  for row in table) + "</table>"
        for title, table in report.get("profile", {}).items() if table)
    samples = "".join(
        f"<h3>Sample bad rows: {escape(check_name(c))} ({escape(c['expectation'])}, "
        f"{escape(str(c['column']))})</h3><ul>"
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
        "<table><tr><th>contract</th><th>check</th><th>expectation</th><th>column</th><th>severity</th><th>result</th>"
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
