"""Reading the prediction log (tasks/serving/predlog.py writes it): JSON-lines parts, one record per scored text.

Here, below the service, so that every reader shares one: the monitor, the gate (accuracy on current traffic,
shadow replay), `tunegate shadow` and `tunegate label-queue`. A part being written is readable at any moment: its
whole lines are its records.

Two kinds of record share the parts: prod's (one per text answered; no `kind` key, as before shadows existed) and
the shadow's (`"kind": "shadow"`: a mirrored text's prod answer and the shadow's). read_prediction_log returns
prod's only, so no figure of prod's traffic counts a shadow answer; read_shadow_log returns the shadow's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

PART_PREFIX = "predictions-"
PART_SUFFIX = ".jsonl"
MTIME_SLACK_S = 2.0  # FAT/SMB mtimes have 2 s resolution
SHADOW_KIND = "shadow"  # the `kind` of a shadow record; prod records carry no `kind`

log = logging.getLogger(__name__)


def list_parts(folder: Path) -> list[Path]:
    """Every process's parts under `folder`, oldest first (by name)."""
    return sorted(folder.glob(f"{PART_PREFIX}*{PART_SUFFIX}"), key=lambda p: p.name)


def read_part(path: Path) -> list[dict]:
    """A part's complete records (a last line without its newline is still being written: skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # pruned between listing and reading
        return []
    lines = data.split(b"\n")[:-1]  # the element after the last newline is empty or a partial line
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("prediction log: %s line %d is not a JSON record; skipped", path, number)
    return records


def is_shadow(record: dict) -> bool:
    return record.get("kind") == SHADOW_KIND


def read_all_records(folder: Path, since: float | None = None, until: float | None = None) -> list[dict]:
    """Every record, prod's and the shadow's, with since <= time < until (UNIX seconds, UTC), oldest first."""
    found: list[dict] = []
    for part in list_parts(Path(folder)):
        try:
            # A record's time is taken before it is written, so a part last written before `since` holds none
            # (with slack for file systems whose mtime is coarser than the records' times).
            if since is not None and part.stat().st_mtime < since - MTIME_SLACK_S:
                continue
        except FileNotFoundError:
            continue
        found.extend(r for r in read_part(part)
                     if (since is None or r["time"] >= since) and (until is None or r["time"] < until))
    # Several workers' parts overlap in time: order the records themselves (stable within a part).
    return sorted(found, key=lambda r: r["time"])


def read_prediction_log(folder: Path, since: float | None = None, until: float | None = None) -> list[dict]:
    """Prod's records with since <= time < until (UNIX seconds, UTC), oldest first; a partly written last line is
    skipped. Shadow records are not prod traffic: left out (read_shadow_log reads them)."""
    return [r for r in read_all_records(folder, since, until) if not is_shadow(r)]


def read_shadow_log(folder: Path, since: float | None = None, until: float | None = None) -> list[dict]:
    """The shadow's records (a mirrored text's prod and shadow answers) with since <= time < until, oldest first."""
    return [r for r in read_all_records(folder, since, until) if is_shadow(r)]


def logged_texts(records: list[dict]) -> list[str]:
    """The texts of records that hold theirs (serve.log_texts was on when they were scored), in record order."""
    return [r["text"] for r in records if isinstance(r.get("text"), str)]
