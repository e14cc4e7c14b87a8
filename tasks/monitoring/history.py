"""The monitor's time series: one JSON line per monitor run (monitor.history), read by `tunegate monitor history`."""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def history_path(project: Path, history: str) -> Path:
    """monitor.history, relative to the project unless absolute."""
    return Path(project) / history


def history_row(judgement: dict[str, Any], new_rows: int = 0) -> dict[str, Any]:
    """What one monitor run adds to the series: window, version, verdicts, every check's figure and the accuracy
    estimated without labels ({value, low, high, rows, confidence}, null when not computed)."""
    return {
        "start": judgement["start"], "end": judgement["end"], "version": judgement["version"],
        "texts": judgement["texts"], "judged": judgement["judged"],
        "alarms": list(judgement["alarms"]), "warnings": list(judgement["warnings"]), "new_rows": new_rows,
        "figures": {c["name"]: finite(c["value"]) for c in judgement["checks"]},
        "estimate": _estimate_row(judgement.get("estimate")),
    }


def _estimate_row(estimate: dict[str, Any] | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {key: finite(estimate[key]) for key in ("value", "low", "high", "confidence")} | {
        "rows": int(estimate["rows"])}


def finite(value: Any) -> float | None:
    """A figure as a plain float, None when absent or not finite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Append one row as one line. A single O_APPEND write of a whole line: a reader (or a second monitor run)
    never sees half a row but a last line cut by a crash, which read_history skips."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, separators=(",", ":"), allow_nan=False, default=_plain) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(value: Any) -> Any:
    # numpy scalars from the statistics: plain numbers in the file
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_history(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The rows, oldest first (the last `last` only); lines that are not whole JSON objects are skipped with a
    warning."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("monitor history: %s line %d is not a JSON row; skipped", path, number)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[-last:] if last else rows


def utc(at: float) -> str:
    """UNIX seconds as 'YYYY-MM-DD HH:MM' UTC."""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M")


def verdict(row: dict[str, Any]) -> str:
    """ALARM / warning / ok, or 'not judged' for a window with too few texts."""
    if not row.get("judged", True):
        return "not judged"
    return "ALARM" if row["alarms"] else "warning" if row["warnings"] else "ok"


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def estimate_cell(estimate: dict[str, Any] | None) -> str:
    """'0.84 0.81-0.87': the accuracy estimated without labels, then its interval; '-' when not computed (and in
    rows written before the monitor estimated it)."""
    if not estimate or estimate.get("value") is None:
        return "-"
    return f"{estimate['value']:.2f} {estimate['low']:.2f}-{estimate['high']:.2f}"


# Widest cell of the short columns of the narrow table (characters): they wrap at spaces, so the flagged checks keep
# the width they need at 80 columns ("not judged" and "new rows" on two lines, the estimate over its interval).
NARROW_MAX_WIDTHS = {"texts": 5, "verdict": 7, "new rows": 4, "est. accuracy": 9}


def history_table(rows: list[dict[str, Any]], wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of the series: window end (UTC), version, texts, verdict, new labelled rows, the accuracy
    estimated without labels with its interval, then the checks that alarmed or warned, with their figures (readable
    at 80 columns). `wide`: one column per check instead (in first-seen order; '-' where a run skipped it)."""
    columns = ["end (UTC)", "version", "texts", "verdict", "new rows", "est. accuracy"]
    cells = [[utc(row["end"]), str(row["version"]), str(row["texts"]), verdict(row), str(row.get("new_rows", 0)),
              estimate_cell(row.get("estimate"))] for row in rows]
    if not wide:
        return [*columns, "flagged checks"], [[*row_cells, _flagged(row)] for row_cells, row in zip(cells, rows)]
    checks: list[str] = []
    for row in rows:
        checks.extend(name for name in row.get("figures", {}) if name not in checks)
    return [*columns, *checks], [[*row_cells, *(_figure(row.get("figures", {}).get(name)) for name in checks)]
                                 for row_cells, row in zip(cells, rows)]


def _flagged(row: dict[str, Any]) -> str:
    """'length_ks 0.9 (alarm), label_psi 0.3 (warning)', or '-' when every check passed."""
    figures = row.get("figures", {})
    flagged = [f"{name} {_figure(figures.get(name))} ({kind})"
               for kind, names in (("alarm", row["alarms"]), ("warning", row["warnings"])) for name in names]
    return ", ".join(flagged) or "-"
