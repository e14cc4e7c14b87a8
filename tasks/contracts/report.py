"""Contract reports: one record per check (GX or computed), the verdict, and JSON/Markdown/HTML renderings."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.errors import TunegateError
from tasks.core.io import write_json, write_text
from tasks.core.paths import ArtifactPaths


class DataValidationError(TunegateError):
    """The data broke its contract; `report` holds every check with its evidence."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(render_markdown(report))


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
