"""New labelled data: files under monitor.labelled_dir whose rows are not yet in the training data.

What has been taken is kept in a ledger, .tunegate/monitoring/arrivals.json: {file name (relative to
labelled_dir, '/'-separated): {sha256 of the bytes taken: rows taken}}. The retraining flow (flows/retrain.py)
records files there with `mark_consumed` once it has added them to the data. Labelled batches are taken to be
append-only: a file that changed since it was taken brings only the rows past the most it ever gave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.config import PipelineConfig
from tasks.core.errors import TunegateError
from tasks.core.io import TABLE_SUFFIXES, file_sha256, read_json, read_table, write_json
from tasks.core.paths import ArtifactPaths

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_BAD_ROWS = 5  # bad rows described per file (the count covers all of them)


class ArrivalsLedgerError(TunegateError):
    """The arrivals ledger exists but cannot be read as {file: {sha256: rows}}."""


@dataclass(frozen=True)
class Arrival:
    """One labelled file with rows not yet taken: what to record once it is, and what was wrong in it."""

    name: str  # relative to labelled_dir, '/'-separated (the ledger's key)
    sha256: str
    rows: int  # rows in the file now (what mark_consumed records as taken)
    new_rows: int  # rows past those already taken
    used_rows: int  # new rows with a text and a known label (in the frame new_labelled returns)
    bad_rows: int
    bad_samples: list[str] = field(default_factory=list)  # "row N: why" (N from 1, header not counted), the first few

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ledger_path(project: Path) -> Path:
    return ArtifactPaths(Path(project)).work_dir / "monitoring" / "arrivals.json"


def read_ledger(project: Path) -> dict[str, dict[str, int]]:
    """The ledger ({} when nothing was ever taken)."""
    path = ledger_path(project)
    if not path.is_file():
        return {}
    try:
        ledger = read_json(path)
    except ValueError as exc:
        raise ArrivalsLedgerError(f"{path} is not JSON ({exc}); fix or delete it (deleting makes every labelled "
                                  "file count as new)") from exc
    if not isinstance(ledger, dict) or not all(
            isinstance(v, dict) and all(isinstance(n, int) for n in v.values()) for v in ledger.values()):
        raise ArrivalsLedgerError(f"{path} must map file names to {{sha256: rows taken}}")
    return ledger


def labelled_dir(project: Path, cfg: PipelineConfig) -> Path | None:
    return None if cfg.monitor.labelled_dir is None else Path(project) / cfg.monitor.labelled_dir


def labelled_files(folder: Path) -> list[Path]:
    """Every CSV/Parquet/JSONL file under folder, in name order (hidden files, e.g. partial uploads, left out)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def rows_taken(entry: dict[str, int], sha256: str, rows: int) -> int:
    """Rows of a file already taken: all when these bytes were, else the most any earlier version gave."""
    if sha256 in entry:
        return rows
    return min(max(entry.values(), default=0), rows)


def bad_row_reasons(frame: pd.DataFrame, text_column: str, label_column: str, labels: list) -> pd.Series:
    """Why each row cannot be used ('' when it can): a missing column, an empty text, or a label not in data.labels."""
    import pandas as pd

    if text_column not in frame or label_column not in frame:
        missing = [c for c in (text_column, label_column) if c not in frame]
        return pd.Series(f"no column {', '.join(map(repr, missing))}", index=frame.index)
    text = frame[text_column]
    no_text = text.isna() | ~text.map(lambda t: isinstance(t, str) and t.strip() != "")
    known = frame[label_column].map(lambda v: _known_label(v, labels))
    reasons = pd.Series("", index=frame.index)
    reasons[~known] = [f"label {v!r} not in data.labels {labels}" for v in frame[label_column][~known]]
    reasons[no_text] = "empty or missing text"
    return reasons


def _known_label(value: Any, labels: list) -> bool:
    # CSV reads 0/1 as numpy ints, JSONL may give floats (1.0): equal values count, strings only as themselves.
    try:
        return any(value == label and type(value) is not bool for label in labels)
    except TypeError:
        return False


def new_labelled(project: Path, cfg: PipelineConfig) -> tuple[pd.DataFrame, list[Arrival]]:
    """New labelled rows (data.text_column and data.label_column only) and the files they came from;
    rows without text or with a label outside data.labels are counted in the Arrival, not returned."""
    import pandas as pd

    text_column, label_column = cfg.data.text_column, cfg.data.label_column
    empty = pd.DataFrame({text_column: pd.Series(dtype=object), label_column: pd.Series(dtype=object)})
    folder = labelled_dir(project, cfg)
    if folder is None:
        return empty, []
    ledger = read_ledger(project)
    frames, arrivals = [], []
    for path in labelled_files(folder):
        name = path.relative_to(folder).as_posix()
        sha256 = file_sha256(path)
        entry = ledger.get(name, {})
        if sha256 in entry:
            continue  # these bytes are in the data already: not even read
        table = read_table(path)
        taken = rows_taken(entry, sha256, len(table))
        fresh = table.iloc[taken:]
        reasons = bad_row_reasons(fresh, text_column, label_column, cfg.data.labels)
        bad = reasons[reasons != ""]
        good = fresh.loc[reasons == "", [text_column, label_column]]
        frames.append(good)
        arrivals.append(Arrival(name, sha256, len(table), len(fresh), len(good), len(bad),
                                [f"row {i + 1}: {why}" for i, why in bad.head(SAMPLE_BAD_ROWS).items()]))
    frame = pd.concat([empty, *frames], ignore_index=True) if frames else empty
    return frame, arrivals


def mark_consumed(project: Path, arrivals: list[Arrival]) -> None:
    """Record the files' current bytes as taken into the training data (atomic rewrite of the ledger)."""
    ledger = read_ledger(project)
    for arrival in arrivals:
        ledger.setdefault(arrival.name, {})[arrival.sha256] = arrival.rows
    write_json(ledger_path(project), ledger)
