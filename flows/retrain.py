"""The retraining flow: new labelled data become a new data version on a git branch, the training pipeline runs
on it, and the model is promoted only when the gate says PROMOTE (through the registry, like `tunegate promote`).

Started by the deployments `nightly` (cron) and `retrain-on-event` (the monitor's events tunegate.drift.detected
and tunegate.data.arrived), see prefect.yaml and flows/deployments.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.states import Cancelled

from flows.workspace import WorkspaceBusy, workspace_lock
from tasks.core.config import DataConfig, PipelineConfig, load_config
from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file, read_json
from tasks.core.paths import ArtifactPaths

if TYPE_CHECKING:
    import pandas as pd

    from tasks.monitoring.arrivals import Arrival

ARTIFACT_KEY = "retraining"  # the Prefect artifact that records each retraining's outcome
# What the source column (data.source_column) says for rows that arrived as labelled batches: they carry only
# the text and label columns. prepare.sources must name it for them to be trained on (the summary says so).
ARRIVED_SOURCE = "arrived"
ARRIVED_SPLIT = "train"  # data that arrives split (data.split_column): new labelled rows are training rows
STAMP = "%Y%m%dT%H%M%SZ"  # UTC; sorts by time; valid in branch and file names
_OLD_STAMP = re.compile(r"\.\d{8}T\d{6}Z$")  # a stamp an earlier retraining put in a file name


class RetrainRefused(TunegateError):
    """The retraining cannot start here: tracked files are uncommitted, or the data is not where DVC tracks it."""


class GitFailed(TunegateError):
    """A git or DVC command of the retraining failed; carries the command and what it printed."""

    def __init__(self, cmd: list[str], output: str):
        self.cmd, self.output = cmd, output
        super().__init__(f"`{' '.join(cmd)}` failed: {output.strip() or '(no output)'}")


@dataclass(frozen=True)
class DataVersion:
    """A new data version committed on a branch: the file written, the rows added, the commit."""

    branch: str
    file: str  # relative to the project
    rows_added: int
    commit: str
    data_path: str  # data.path after the change (changed when data.path names one file)
    files: list[str] = field(default_factory=list)  # the labelled files taken (relative to monitor.labelled_dir)


# --- pure rules --------------------------------------------------------------------------------------------------


def branch_name(prefix: str, now: datetime) -> str:
    """The branch of one retraining: the configured prefix and the UTC time, e.g. retrain/20260101T030000Z."""
    return f"{prefix}{now.astimezone(timezone.utc).strftime(STAMP)}"


def version_file(data_path: Path, is_dir: bool, now: datetime) -> Path:
    """Where a new data version's file goes: a new part inside a data folder (read with the others), or beside a
    single data file a new file holding all its rows plus the new ones (the old file is never rewritten)."""
    stamp = now.astimezone(timezone.utc).strftime(STAMP)
    if is_dir:
        return data_path / f"arrived.{stamp}.csv"
    stem = _OLD_STAMP.sub("", data_path.stem)
    return data_path.with_name(f"{stem}.{stamp}{data_path.suffix}")


def fill_columns(new: pd.DataFrame, columns: list[str], data: DataConfig) -> pd.DataFrame:
    """New labelled rows (text and label only) shaped like the data's table: its source column says
    ARRIVED_SOURCE, its split column ARRIVED_SPLIT, any other column is left empty."""
    shaped = new.copy()
    for column in columns:
        if column in shaped:
            continue
        if column == data.source_column:
            shaped[column] = ARRIVED_SOURCE
        elif column == data.split_column:
            shaped[column] = ARRIVED_SPLIT
        else:
            shaped[column] = None
    return shaped[columns + [c for c in shaped.columns if c not in columns]]


def unused_rows_warning(cfg: PipelineConfig, rows: int) -> str | None:
    """Why new rows would be versioned but not trained on (prepare.sources leaves their source out), or None."""
    sources = cfg.prepare.sources
    if not rows or not sources or cfg.data.source_column is None or ARRIVED_SOURCE in sources:
        return None
    return (f"the {rows} new rows have {cfg.data.source_column} {ARRIVED_SOURCE!r}, which prepare.sources "
            f"({sources}) leaves out: they are in the new data version but not trained on. Add {ARRIVED_SOURCE!r} "
            "to prepare.sources to train on them")


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


# --- git and DVC -------------------------------------------------------------------------------------------------


def _run(cmd: list[str], root: Path) -> str:
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise GitFailed(cmd, done.stderr + done.stdout)
    return done.stdout.strip()


def git(root: Path, *args: str) -> str:
    return _run(["git", *args], root)


def dvc(root: Path, *args: str) -> str:
    # The venv's own DVC (python -m dvc), whatever PATH holds (a worker's PATH may lack the venv's bin).
    return _run([sys.executable, "-m", "dvc", *args], root)


def tracking_out(root: Path, data_path: Path, dvc_file: str = "data.dvc") -> str:
    """The out of `dvc_file` that holds data.path (e.g. "data"); RetrainRefused when none does."""
    from flows.ci import tracked_data

    outs = tracked_data(root, dvc_file)
    for out in outs:
        if data_path.resolve().is_relative_to((root / out).resolve()):
            return out
    raise RetrainRefused(f"data.path {data_path.relative_to(root)} is not under what {dvc_file} tracks "
                         f"({', '.join(outs) or 'nothing'}): a new data version cannot be recorded. "
                         "Track the data folder with `dvc add` first")


def check_clean(root: Path) -> None:
    """Refuse to start when tracked files differ from HEAD: the retraining commits, and must commit only its own."""
    from tasks.registry.promote import dirty_files

    if dirty := dirty_files(root):
        raise RetrainRefused(f"tracked files differ from the commit ({', '.join(dirty)}): a retraining commits a new "
                             "data version and dvc.lock, and would take these changes along. Commit or restore them")


def check_labelled_outside_data(root: Path, cfg: PipelineConfig) -> None:
    """Refuse a labelled_dir inside a data folder that the pipeline reads: its rows would be trained on twice."""
    data_path = root / cfg.data.path
    if cfg.monitor.labelled_dir is None or not data_path.is_dir():
        return
    if (root / cfg.monitor.labelled_dir).resolve().is_relative_to(data_path.resolve()):
        raise RetrainRefused(f"monitor.labelled_dir ({cfg.monitor.labelled_dir}) is inside data.path "
                             f"({cfg.data.path}), which the pipeline reads whole: new rows would be read there and "
                             "again from the data version. Move monitor.labelled_dir outside it")


def write_version(root: Path, cfg: PipelineConfig, new: pd.DataFrame, now: datetime) -> tuple[Path, str]:
    """Write the new data version's file (atomically); returns it and data.path as it must read after."""
    from tasks.core.io import read_table, read_table_files

    data_path = root / cfg.data.path
    target = version_file(data_path, data_path.is_dir(), now)
    if data_path.is_dir():
        first = next(iter(read_table_files(data_path).values()))
        table = fill_columns(new, list(first.columns), cfg.data)
    else:
        import pandas as pd

        old = read_table(data_path)
        added = fill_columns(new, list(old.columns), cfg.data)
        # The label column keeps the data's type (a JSONL batch may give 1.0 for the data's 1).
        added[cfg.data.label_column] = added[cfg.data.label_column].astype(old[cfg.data.label_column].dtype)
        table = pd.concat([old, added], ignore_index=True)
    with atomic_file(target) as tmp:
        suffix = target.suffix.lower()
        if suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        elif suffix == ".jsonl":
            table.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            table.to_csv(tmp, index=False)
    data_after = cfg.data.path if data_path.is_dir() else target.relative_to(root).as_posix()
    return target, data_after


def add_data_version(root: Path, cfg: PipelineConfig, new: pd.DataFrame, arrivals: list[Arrival],
                     now: datetime) -> DataVersion:
    """On a new branch: write the new rows as a new data version, `dvc add` it, commit data.dvc (and params.yaml
    when data.path moved to the new file), then record the labelled files as taken in the arrivals ledger."""
    from tasks.core.config import write_overrides
    from tasks.monitoring.arrivals import mark_consumed

    out = tracking_out(root, root / cfg.data.path)
    branch = branch_name(cfg.orchestration.retrain_branch, now)
    git(root, "checkout", "-q", "-b", branch)
    target, data_after = write_version(root, cfg, new, now)
    changes = [f"data.path={data_after}"] if data_after != cfg.data.path else []
    if cfg.prepare.sources and cfg.data.source_column is not None and ARRIVED_SOURCE not in cfg.prepare.sources:
        # The team collected these rows to be trained on: the source filter takes them in, recorded in params.yaml
        # in the same commit as the data version (so the branch says exactly what the retraining read).
        changes.append(f"prepare.sources=[{', '.join([*cfg.prepare.sources, ARRIVED_SOURCE])}]")
    if changes:
        write_overrides(root / "params.yaml", changes)
    dvc(root, "add", "-q", out)
    git(root, "add", "--", f"{out}.dvc", "params.yaml")
    files = [a.name for a in arrivals]
    git(root, "commit", "-q", "-m", f"retrain: data version with {len(new)} new labelled rows\n\n"
                                    f"File {target.relative_to(root).as_posix()}; labelled files: {', '.join(files)}")
    commit = git(root, "rev-parse", "HEAD")
    # After the commit: a run that failed before it leaves the files counted as new, to be taken next time.
    mark_consumed(root, arrivals)
    return DataVersion(branch, target.relative_to(root).as_posix(), len(new), commit, data_after, files)


def commit_model(root: Path, branch: str | None, prefix: str, now: datetime) -> tuple[str | None, str | None]:
    """Commit what the pipeline changed in tracked files (dvc.lock, params.yaml overrides) on the retraining's
    branch (made now when there is none yet); (branch, commit), or (branch, None) when nothing changed."""
    from tasks.registry.promote import dirty_files

    # A project's first run leaves dvc.lock untracked, which dirty_files (tracked changes) does not see.
    lock_untracked = (root / "dvc.lock").is_file() and not git(root, "ls-files", "--", "dvc.lock")
    if not dirty_files(root) and not lock_untracked:
        return branch, None
    if branch is None:
        branch = branch_name(prefix, now)
        git(root, "checkout", "-q", "-b", branch)
    git(root, "add", "-u")
    # The CPU record travels with dvc.lock (tasks/core/lock_cpu.py); a project's first run leaves both untracked.
    lock_cpu = ArtifactPaths(root).lock_cpu
    git(root, "add", "--", "dvc.lock", *([lock_cpu.name] if lock_cpu.is_file() else []))
    git(root, "commit", "-q", "-m", "retrain: dvc.lock of the retrained model")
    return branch, git(root, "rev-parse", "HEAD")


def push_branch(root: Path, remote: str, branch: str) -> None:
    """Send the data (DVC remote) and the branch (git remote) where the team sees them: orchestration.retrain_push."""
    dvc(root, "push", "-q")
    git(root, "push", "-q", "-u", remote, branch)


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
    from flows.ci import already_registered

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
