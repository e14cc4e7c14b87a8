"""The label queue's comparison re-judged from the labelled rows that came back (monitor.labelled_dir): by
`tunegate label-queue judge` and by every monitor run while a queue waits beside an INCONCLUSIVE decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import PipelineConfig
from tasks.core.io import read_json, read_table, write_json
from tasks.core.paths import ArtifactPaths
from tasks.judging.compare import INCONCLUSIVE
from tasks.judging.label_queue import LabelQueueError, rejudge, row_ids
from tasks.monitoring.arrivals import bad_row_reasons, labelled_files


def labelled_classes(folder: Path, cfg: PipelineConfig) -> tuple[list[str], list[int], int]:
    """Texts and class indices of every usable labelled row under `folder` (CSV/Parquet/JSONL, the data's text
    and label columns, read as the monitor reads labelled batches), and the count of rows left out as bad."""
    text_column, label_column, labels = cfg.data.text_column, cfg.data.label_column, cfg.data.labels
    files = labelled_files(folder)
    if not files:
        raise LabelQueueError(f"no labelled CSV/Parquet/JSONL files under {folder}")
    frames, bad = [], 0
    for path in files:
        table = read_table(path)
        reasons = bad_row_reasons(table, text_column, label_column, labels)
        bad += int((reasons != "").sum())
        frames.append(table.loc[reasons == "", [text_column, label_column]])
    rows = pd.concat(frames, ignore_index=True)
    # Values as the data writes them (CSV 0/1, JSONL 1.0): equal values name the same class.
    classes = [next(i for i, label in enumerate(labels) if value == label) for value in rows[label_column]]
    return list(rows[text_column]), classes, bad


def judge_queue(cfg: PipelineConfig, queue_path: Path, folder: Path, out: Path) -> dict[str, Any]:
    """Re-judge the queue at `queue_path` from the labelled rows under `folder` (tasks.judging.label_queue.rejudge)
    and write the verdict to `out`, with the sha256 of the decision the queue was built for (its plan records it:
    promote accepts a settled verdict for that decision only)."""
    if not queue_path.is_file():
        raise LabelQueueError(f"{queue_path} is missing: run `tunegate label-queue` first")
    queue = pd.read_csv(queue_path, dtype={"id": str, "stratum": str})
    texts, classes, bad = labelled_classes(folder, cfg)
    plan = queue_path.with_suffix(".json")
    judged = {**rejudge(queue, row_ids(texts), classes, len(cfg.data.labels), cfg.gate, cfg.seed),
              "bad_rows": bad, "queue": str(queue_path), "labelled_dir": str(folder),
              "decision_sha256": read_json(plan).get("decision_sha256") if plan.is_file() else None}
    write_json(out, judged)
    return judged


def waiting_queue_verdict(root: Path, cfg: PipelineConfig) -> dict[str, Any] | None:
    """For the monitor: the queue beside an INCONCLUSIVE decision re-judged from monitor.labelled_dir, written where
    `tunegate promote` reads it; None when no queue waits, or {"skipped": why} when it cannot be judged yet."""
    paths = ArtifactPaths(root)
    if not paths.label_queue.is_file() or cfg.monitor.labelled_dir is None or not paths.decision.is_file():
        return None
    if read_json(paths.decision).get("decision") != INCONCLUSIVE:
        return None
    try:
        return judge_queue(cfg, paths.label_queue, root / cfg.monitor.labelled_dir, paths.label_verdict)
    except LabelQueueError as exc:
        return {"skipped": str(exc)}
