"""The monitor's report of one window: Markdown (the Prefect artifact `monitoring`) and a self-contained HTML page
(inline CSS and SVG, no external URL), under .tunegate/monitoring/reports/<UTC time>.{md,html}."""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.core.io import write_text
from tasks.core.paths import ArtifactPaths

BAR_WIDTH = 160  # px of the inline SVG bar that draws a figure against its bound (the bound sits at 2/3 of it)


def reports_dir(project: Path) -> Path:
    return ArtifactPaths(Path(project)).work_dir / "monitoring" / "reports"


def report_stem(end: float) -> str:
    """A report's file name (no suffix): the window's end in UTC, fixed width, so names sort by time."""
    return datetime.fromtimestamp(end, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_verdict(check: dict[str, Any]) -> str:
    """pass / skipped / ALARM / warning: a check that could not be computed is never shown as passing."""
    if check.get("value") is None or check.get("skipped"):
        return "skipped"
    if check["passed"]:
        return "pass"
    return "ALARM" if check["severity"] == "alarm" else "warning"


def overall_verdict(judgement: dict[str, Any]) -> str:
    if not judgement["judged"]:
        return "not judged"
    return "ALARM" if judgement["alarms"] else "warning" if judgement["warnings"] else "ok"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def _headline(judgement: dict[str, Any]) -> str:
    verdict = overall_verdict(judgement)
    if verdict == "not judged":
        return f"not judged: {judgement['texts']} texts in the window, too few to judge"
    failed = judgement["alarms"] + judgement["warnings"]
    return verdict + (f": {', '.join(failed)}" if failed else ": every check within its bound")


def estimate_line(judgement: dict[str, Any]) -> str:
    """The window's accuracy estimated without labels, with its interval, or why it was not computed (judgements
    made before the monitor estimated it say so too)."""
    estimate = judgement.get("estimate")
    if estimate is None:
        why = judgement.get("estimate_skipped") or "not recorded in this judgement"
        return f"accuracy estimated without labels: not computed ({why})"
    return (f"accuracy estimated without labels: {estimate['value']:.3f} [{estimate['low']:.3f}, "
            f"{estimate['high']:.3f}] ({estimate['confidence']:.0%} interval of the accuracy these "
            f"{estimate['rows']} texts would show once labelled, if the probabilities are calibrated on them)")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, no column breaks)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(judgement: dict[str, Any], arrivals: list[dict[str, Any]] | None = None) -> str:
    """The window's report: headline, window, version, a table of every check, and new labelled files."""
    lines = [f"# Monitoring: {_headline(judgement)}", "",
             f"- window: {iso(judgement['start'])} to {iso(judgement['end'])}",
             f"- model version: {judgement['version']}",
             f"- texts scored in the window: {judgement['texts']}",
             f"- {estimate_line(judgement)}", "",
             "| check | value | bound | severity | verdict | evidence |", "|---|---|---|---|---|---|"]
    for check in judgement["checks"]:
        lines.append(f"| {check['name']} | {_number(check['value'])} | {_number(check['threshold'])} | "
                     f"{check['severity']} | {check_verdict(check)} | {_cell(check.get('evidence', ''))} |")
    lines += ["", *_arrivals_markdown(arrivals or [])]
    return "\n".join(lines).rstrip() + "\n"


def _arrivals_markdown(arrivals: list[dict[str, Any]]) -> list[str]:
    if not arrivals:
        return ["No new labelled files."]
    lines = ["## New labelled data", "", "| file | new rows | used | bad | bad rows (first few) |", "|---|---|---|---|---|"]
    for a in arrivals:
        lines.append(f"| {_cell(a['name'])} | {a['new_rows']} | {a['used_rows']} | {a['bad_rows']} | "
                     f"{_cell('; '.join(a['bad_samples']))} |")
    return lines


def bar_svg(value: float | None, bound: float | None, failed: bool) -> str:
    """A small inline SVG: the figure as a bar, the bound as a vertical line at 2/3 of the width."""
    if value is None or bound is None or not math.isfinite(float(value)):
        return ""
    scale = (BAR_WIDTH * 2 / 3) / bound if bound > 0 else 0.0
    width = min(BAR_WIDTH, max(0.0, float(value)) * scale) if scale else (BAR_WIDTH if value > 0 else 0)
    mark = BAR_WIDTH * 2 / 3
    colour = "#c0392b" if failed else "#2e8b57"
    return (f'<svg width="{BAR_WIDTH}" height="12" role="img" aria-label="value {_number(value)}, bound '
            f'{_number(bound)}"><rect x="0" y="2" width="{width:.1f}" height="8" fill="{colour}"/>'
            f'<line x1="{mark:.1f}" y1="0" x2="{mark:.1f}" y2="12" stroke="#333" stroke-width="1.5"/></svg>')


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.ALARM{color:#fff;background:#c0392b;font-weight:bold}.warning{background:#f5c542}.pass,.ok{color:#2e8b57}
.skipped,.not{color:#777}"""


def render_html(judgement: dict[str, Any], arrivals: list[dict[str, Any]] | None = None) -> str:
    """The same report as one self-contained page: inline CSS and SVG, nothing fetched from anywhere."""
    e = html.escape
    verdict = overall_verdict(judgement)
    rows = []
    for check in judgement["checks"]:
        v = check_verdict(check)
        rows.append(f"<tr><td>{e(check['name'])}</td><td>{_number(check['value'])}</td>"
                    f"<td>{_number(check['threshold'])}</td><td>{e(check['severity'])}</td>"
                    f'<td class="{v.split()[0]}">{v}</td>'
                    f"<td>{bar_svg(check['value'], check['threshold'], v in ('ALARM', 'warning'))}</td>"
                    f"<td>{e(str(check.get('evidence', '')))}</td></tr>")
    files = "".join(f"<tr><td>{e(a['name'])}</td><td>{a['new_rows']}</td><td>{a['used_rows']}</td>"
                    f"<td>{a['bad_rows']}</td><td>{e('; '.join(a['bad_samples']))}</td></tr>" for a in arrivals or [])
    arrivals_html = (f"<h2>New labelled data</h2><table><tr><th>file</th><th>new rows</th><th>used</th><th>bad</th>"
                     f"<th>bad rows (first few)</th></tr>{files}</table>" if files else "<p>No new labelled files.</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Monitoring {e(report_stem(judgement['end']))}</title><style>{_CSS}</style></head><body>"
            f'<h1>Monitoring: <span class="{verdict.split()[0]}">{e(_headline(judgement))}</span></h1>'
            f"<ul><li>window: {iso(judgement['start'])} to {iso(judgement['end'])}</li>"
            f"<li>model version: {e(str(judgement['version']))}</li>"
            f"<li>texts scored in the window: {judgement['texts']}</li>"
            f"<li>{e(estimate_line(judgement))}</li></ul>"
            f"<table><tr><th>check</th><th>value</th><th>bound</th><th>severity</th><th>verdict</th>"
            f"<th>value against bound (line)</th><th>evidence</th></tr>{''.join(rows)}</table>"
            f"{arrivals_html}</body></html>\n")


def write_report(project: Path, judgement: dict[str, Any],
                 arrivals: list[dict[str, Any]] | None = None) -> tuple[Path, Path, str]:
    """Write <UTC end>.md and .html under the reports folder (atomically); returns both paths and the Markdown."""
    folder = reports_dir(project)
    stem = report_stem(judgement["end"])
    markdown = render_markdown(judgement, arrivals)
    md_path, html_path = folder / f"{stem}.md", folder / f"{stem}.html"
    write_text(md_path, markdown)
    write_text(html_path, render_html(judgement, arrivals))
    return md_path, html_path, markdown
