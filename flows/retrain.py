"""The retraining flow: new labelled data become a new data version on a git branch, the training pipeline runs
on it, and the model is promoted only when the gate says PROMOTE (through the registry, like `tunegate promote`).

Started by the deployments `nightly` (cron) and `retrain-on-event` (the monitor's events tunegate.drift.detected
and tunegate.data.arrived), see prefect.yaml and flows/deployments.py.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.states import Cancelled

from flows.workspace import WorkspaceBusy, workspace_lock
from tasks.core.config import PipelineConfig, load_config
from tasks.core.io import read_json
from tasks.core.paths import ArtifactPaths
from tasks.monitoring.data_version import (add_data_version, check_clean, check_labelled_outside_data, commit_model,
                                           push_branch, unused_rows_warning)

ARTIFACT_KEY = "retraining"  # the Prefect artifact that records each retraining's outcome


# --- pure rules --------------------------------------------------------------------------------------------------


def promotion_verdict(decision: dict[str, Any], already: str | None) -> tuple[bool, str]:
    """Whether to promote after the gate ran, and why (or why not): only a PROMOTE of a model not yet registered."""
    verdict, why = decision.get("decision"), decision.get("why", "(no reason recorded)")
    if verdict != "PROMOTE":
        return False, f"gate {verdict}: {why}"
    if already:
        return False, f"gate PROMOTE, but {already}"
    return True, f"gate PROMOTE: {why}"


def event_summary(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of the triggering Prefect event worth keeping: its name, id, time, resource and figures."""
    if not event:
        return None
    resource = event.get("resource") or {}
    return {"event": event.get("event"), "id": event.get("id"), "occurred": event.get("occurred"),
            "resource": resource.get("prefect.resource.id") if isinstance(resource, dict) else resource,
            "payload": event.get("payload")}


def render_summary(summary: dict[str, Any]) -> str:
    """The `retraining` artifact: what triggered the run, the data version, the gate's verdict, the promotion."""
    data = summary.get("data_version")
    lines = [f"# Retraining: {summary['outcome']}", "",
             f"- reason: {summary.get('reason') or '(none given)'}",
             f"- project: `{summary['project']}`"]
    if summary.get("event"):
        event = summary["event"]
        lines.append(f"- event: `{event.get('event')}` ({event.get('id')}, {event.get('occurred')})")
    if data:
        lines.append(f"- new data version: {data['rows_added']} rows from {len(data['files'])} labelled files in "
                     f"`{data['file']}`, committed {data['commit'][:12]} on branch `{data['branch']}`")
    else:
        lines.append("- new data version: none (no new labelled rows)")
    for stage in summary.get("stages", []):
        lines.append(f"  - {stage['stage']}: {stage['status']} {stage.get('key_figure', '')}".rstrip())
    if summary.get("model_commit"):
        lines.append(f"- model committed: {summary['model_commit'][:12]} on `{summary.get('branch')}`")
    lines.append(f"- gate: {summary.get('decision') or '(did not run)'}")
    lines.append(f"- promotion: {summary.get('promotion') or summary.get('why_not') or '(none)'}")
    for warning in summary.get("warnings", []):
        lines.append(f"- **warning**: {warning}")
    if summary.get("error"):
        lines.append(f"- **error**: {summary['error']}")
    return "\n".join(lines) + "\n"


# --- the flow ----------------------------------------------------------------------------------------------------


def _log() -> Any:
    import logging

    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def promote_step(root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Read the gate's decision and promote through the registry only on PROMOTE; what happened, or why not."""
    from tasks.registry.promote import already_registered

    decision = read_json(ArtifactPaths(root).decision)
    go, why = promotion_verdict(decision, already_registered(root, decision))
    result: dict[str, Any] = {"decision": decision.get("decision"), "why": why}
    if not go:
        result["why_not"] = why
        return result
    from tasks.registry.promote import promote

    done = promote(root, push=cfg.orchestration.retrain_push)
    result["promotion"] = f"{done.version} to {done.stage} (tags {', '.join(done.tags)})"
    result["version"] = done.version
    return result


@flow(name="retrain")
def retrain(project: str = ".", reason: str = "", event: dict[str, Any] | None = None,
            overrides: list[str] | None = None) -> dict[str, Any]:
    """New labelled data -> a data version on a branch -> training_pipeline -> promote only on PROMOTE.

    `reason` says why it runs (nightly, or the event's name); `event` is the triggering Prefect event (deployment
    triggers pass "{{ event }}"); `overrides` are training_pipeline's `section.key=value` strings.
    Returns a summary (also published as the Prefect artifact `retraining`).
    """
    root = Path(project).resolve()
    log = _log()
    summary: dict[str, Any] = {"project": str(root), "reason": reason, "event": event_summary(event),
                               "outcome": "started", "warnings": []}
    log.info("retraining %s (reason: %s)", root, reason or "none given")
    try:
        with workspace_lock(ArtifactPaths(root), f"retrain flow ({reason or 'no reason given'})"):
            _retrain(root, overrides, summary, log)
    except WorkspaceBusy as exc:
        # Another run (the nightly retraining, `tunegate run`) works here: this trigger is dropped, as the
        # deployment's CANCEL_NEW concurrency limit drops a second retraining. The monitor raises it again if needed.
        log.warning("%s", exc)
        summary.update(outcome="cancelled: the workspace is busy", error=str(exc))
        _publish(summary)
        return Cancelled(message=str(exc), data=summary)  # type: ignore[return-value]
    except Exception as exc:
        summary.update(outcome=f"failed ({type(exc).__name__})", error=str(exc))
        _publish(summary)
        raise
    _publish(summary)
    return summary


def _retrain(root: Path, overrides: list[str] | None, summary: dict[str, Any], log: Any) -> None:
    from flows.pipeline import training_pipeline
    from tasks.monitoring.arrivals import new_labelled

    cfg = load_config(root / "params.yaml")
    check_clean(root)
    check_labelled_outside_data(root, cfg)
    now = datetime.now(timezone.utc)
    new, arrivals = new_labelled(root, cfg)
    for arrival in arrivals:
        if arrival.bad_rows:
            summary["warnings"].append(f"{arrival.name}: {arrival.bad_rows} rows left out "
                                       f"({'; '.join(arrival.bad_samples)})")
    branch = None
    if len(new):
        version = add_data_version(root, cfg, new, arrivals, now)
        branch = version.branch
        summary["data_version"] = asdict(version)
        log.info("new data version: %d rows in %s, commit %s on branch %s", version.rows_added, version.file,
                 version.commit[:12], branch)
        cfg = load_config(root / "params.yaml")  # data.path may have moved to the new file
        if warning := unused_rows_warning(cfg, len(new)):
            summary["warnings"].append(warning)
    else:
        log.info("no new labelled rows: retraining on the current data version")
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    outcomes = training_pipeline(overrides=overrides, project=str(root))
    summary["stages"] = [{"stage": o.stage, "status": o.status, "key_figure": o.key_figure} for o in outcomes]
    branch, model_commit = commit_model(root, branch, cfg.orchestration.retrain_branch, now)
    summary.update(branch=branch, model_commit=model_commit)
    if model_commit:
        log.info("committed dvc.lock %s on branch %s", model_commit[:12], branch)
    if branch and cfg.orchestration.retrain_push:
        push_branch(root, cfg.orchestration.retrain_push, branch)
        log.info("pushed branch %s to %s", branch, cfg.orchestration.retrain_push)
    result = promote_step(root, cfg)
    summary.update(result)
    summary["outcome"] = f"promoted {result['version']}" if "version" in result else "not promoted"
    log.info("%s: %s", summary["outcome"], result.get("promotion") or result.get("why_not"))


def _publish(summary: dict[str, Any]) -> None:
    """The `retraining` artifact of this flow run (skipped outside one, e.g. `retrain.fn` in a test)."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_markdown_artifact(markdown=render_summary(summary), key=ARTIFACT_KEY,
                             description=f"retraining of {Path(summary['project']).name}")
