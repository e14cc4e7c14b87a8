"""The monitor flow: one window of the prediction log (and any new labelled data) against the production model's
training data; a report, a point of the time series, and Prefect events that start retraining."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from tasks.core.config import PipelineConfig, load_config
from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths
from tasks.monitoring.arrivals import Arrival, new_labelled
from tasks.monitoring.history import append_history, finite, history_path, history_row
from tasks.monitoring.label_verdict import waiting_queue_verdict
from tasks.monitoring.report import iso, write_report
from tasks.runtime.prediction_log import read_prediction_log
from tasks.runtime.settings import REGISTRY_PREFIX

DRIFT_EVENT = "tunegate.drift.detected"
DATA_EVENT = "tunegate.data.arrived"
ARTIFACT_KEY = "monitoring"
RESOURCE_PREFIX = "tunegate.model."  # + serve.model_name: the resource both events concern (retraining matches it)


class NothingToMonitor(TunegateError):
    """No production model to judge traffic against: nothing in the registry's stage and no served folder."""


@dataclass(frozen=True)
class Monitored:
    """The model whose traffic is judged: where its release folder is and how its reference is read."""
    folder: Path
    stage: str | None  # the registry stage that holds it; None: a served folder outside the registry


def _log(message: str, level: int = logging.INFO) -> None:
    """A line in the flow run's log (the Prefect UI), or this module's log outside a flow run."""
    try:
        get_run_logger().log(level, message)
    except MissingContextError:
        logging.getLogger(__name__).log(level, message)


def window_bounds(end: float | str | None, minutes: float, now: float) -> tuple[float, float]:
    """(start, end) in UNIX seconds: `end` as UNIX seconds or ISO 8601 (UTC without an offset), default now."""
    if end is None:
        stop = now
    elif isinstance(end, str):
        from tasks.registry.history import parse_instant

        stop = parse_instant(end).timestamp()
    else:
        stop = float(end)
    return stop - minutes * 60.0, stop


def monitored_model(root: Path, cfg: PipelineConfig) -> Monitored:
    """The registry's version in the stage serve.model follows (prod when serve.model is a folder); without one,
    the folder serve.model names (a project that serves without promoting)."""
    from tasks.registry.fetch import fetch_release
    from tasks.registry.tags import PROD, find_version, in_stage
    from tasks.serving.source import served_model_file, source_for

    follows = cfg.serve.model.startswith(REGISTRY_PREFIX)
    stage = cfg.serve.model.removeprefix(REGISTRY_PREFIX).strip() if follows else PROD
    move = in_stage(root, stage)  # None outside a git repository too
    if move is not None:
        return Monitored(fetch_release(ArtifactPaths(root), find_version(root, move.version)), stage)
    if follows:
        raise NothingToMonitor(f"serve.model is {cfg.serve.model} but no version is in {stage}: promote one first "
                               "(tunegate promote)")
    folder = source_for(cfg.serve.model, root).folder
    served_model_file(folder)  # a SourceError naming what is missing
    return Monitored(folder, None)


def read_reference(root: Path, cfg: PipelineConfig, model: Monitored) -> Any:
    """The reference: the stage's version through DVC (cached), or the served folder with the training split
    and gate decision that are on disk."""
    from tasks.monitoring.reference import load_reference, reference_from_folder

    if model.stage is not None:
        return load_reference(root, cfg, model.stage)
    from tasks.monitoring.performance import read_gate_figures

    paths = ArtifactPaths(root)
    if not paths.split("train").is_file():
        raise NothingToMonitor(f"{model.folder} is served outside the registry and {paths.split('train')} (its "
                               "training split) is missing: run the pipeline, or promote a version")
    return reference_from_folder(model.folder, paths.split("train"), cfg,
                                 gate_figures=read_gate_figures(paths.decision, cfg.gate))


def score_arrivals(batch: Any, cfg: PipelineConfig, model: Monitored) -> Any:
    """New labelled rows scored by the monitored model one text at a time (as live requests are); None without."""
    if batch is None or batch.empty:
        return None
    from tasks.monitoring.performance import score_labelled
    from tasks.monitoring.reference import scoring_threads  # the same thread rule as the reference
    from tasks.serving.scoring import load_served

    served = load_served(model.folder, cfg.serve.model_name, None, threads=scoring_threads(cfg))
    try:
        return score_labelled(served, batch, cfg.data)
    finally:
        served.close()


def resource(cfg: PipelineConfig) -> dict[str, str]:
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{cfg.serve.model_name}",
            "prefect.resource.name": cfg.serve.model_name}


def drift_payload(judgement: dict[str, Any], minutes: float, report: Path) -> dict[str, Any] | None:
    """tunegate.drift.detected's payload: the alarm-severity checks that failed with their figures, every figure,
    the accuracy estimated without labels, the window and the version; None when no alarm (or the window was not
    judged)."""
    if not judgement["judged"] or not judgement["alarms"]:
        return None
    failed = [{"name": c["name"], "value": finite(c["value"]), "threshold": c["threshold"],
               "severity": c["severity"], "evidence": c.get("evidence", "")}
              for c in judgement["checks"] if c["name"] in judgement["alarms"]]
    return {"version": judgement["version"], "failed": failed, "alarms": list(judgement["alarms"]),
            "warnings": list(judgement["warnings"]),
            "figures": {c["name"]: finite(c["value"]) for c in judgement["checks"]},
            "estimate": judgement.get("estimate"),
            "window": {"start": iso(judgement["start"]), "end": iso(judgement["end"]), "minutes": minutes,
                       "texts": judgement["texts"]},
            "report": str(report)}


def arrivals_payload(arrivals: list[Arrival], min_rows: int, version: str) -> dict[str, Any] | None:
    """tunegate.data.arrived's payload (files and usable rows); None below monitor.min_new_rows."""
    rows = sum(a.used_rows for a in arrivals)
    if rows < min_rows:
        return None
    return {"version": version, "rows": rows, "files": [a.to_dict() for a in arrivals]}


def emit(event: str, cfg: PipelineConfig, payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource=resource(cfg), payload=payload)
    what = ", ".join(payload["alarms"]) if event == DRIFT_EVENT else f"{payload['rows']} rows"
    _log(f"emitted {event} ({what})")


@flow(name="monitor")
def monitor(project: str = ".", window_minutes: float | None = None, end: float | str | None = None) -> dict:
    """Judge the prediction log's window ending at `end` (default now; monitor.window_minutes long) and any new
    labelled data against the production model's training data; report, record, and emit the events."""
    root = Path(project).resolve()
    cfg = load_config(ArtifactPaths(root).params)
    minutes = window_minutes or cfg.monitor.window_minutes
    start, stop = window_bounds(end, minutes, time.time())
    model = monitored_model(root, cfg)
    reference = read_reference(root, cfg, model)
    records = read_prediction_log(root / cfg.serve.log_dir, start, stop)
    # The window is judged for the version the reference describes: texts another version answered (before a
    # promotion or rollback) would be compared with the wrong model's predictions.
    judged = [r for r in records if r.get("model_version") == reference.version]
    if len(judged) < len(records):
        _log(f"{len(records) - len(judged)} of {len(records)} texts in the window were scored by another version "
             f"than {reference.version}: left out", logging.WARNING)
    batch, arrivals = new_labelled(root, cfg)
    from tasks.monitoring.judge import judge_window

    judgement = judge_window(judged, reference, cfg.monitor, labelled=score_arrivals(batch, cfg, model),
                             gate_figures=reference.gate_figures, seed=cfg.seed, start=start, end=stop).to_dict()
    judgement["served_versions"] = dict(Counter(str(r.get("model_version")) for r in records))  # left-out ones too
    files = [a.to_dict() for a in arrivals]
    md_path, html_path, markdown = write_report(root, judgement, files)
    # The Markdown carries every check and the window's accuracy estimated without labels (report.estimate_line).
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=f"monitor, {root.name}")
    new_rows = sum(a.used_rows for a in arrivals)
    # A label queue waiting beside an INCONCLUSIVE decision is re-judged from the rows labelled so far: a settled
    # PROMOTE is what `tunegate promote` then accepts (tasks/registry/promote.py: settled_by_labels).
    queue_verdict = waiting_queue_verdict(root, cfg)
    if queue_verdict is not None:
        _log(f"label queue: {queue_verdict.get('skipped') or queue_verdict['why']}")
    append_history(history_path(root, cfg.monitor.history), history_row(judgement, new_rows))
    emitted = []
    for event, payload in ((DRIFT_EVENT, drift_payload(judgement, minutes, md_path)),
                           (DATA_EVENT, arrivals_payload(arrivals, cfg.monitor.min_new_rows, reference.version))):
        if payload is not None:
            emit(event, cfg, payload)
            emitted.append(event)
    return {**judgement, "arrivals": files, "new_rows": new_rows, "events": emitted, "label_queue": queue_verdict,
            "report": {"markdown": str(md_path), "html": str(html_path)}}
