"""The Prefect flow: the stages in DAG order, each skipped when DVC says it is up to date."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.states import Completed

from flows.reliability import call_with_retries, stage_deadline
from flows.workspace import clear_failure_report, workspace_lock
from tasks.core.config import STAGES, PipelineConfig, load_config, write_overrides
from tasks.contracts.report import DataValidationError, render_markdown
from tasks.core.dvc_cache import DvcStageCache
from tasks.core.dvc_data import data_differences
from tasks.core.io import recover_swaps
from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import load_stage, read_result
from tasks.registry.champion import champion_moved


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # completed | skipped | failed | unrecorded (completed, but not recorded in dvc.lock)
    seconds: float
    key_figure: str
    note: str = ""  # why an unrecorded stage was not recorded


class UntrackedDataChange(TunegateError):
    """data/ differs from data.dvc: a run would train on data that DVC has not versioned."""

    def __init__(self, differences: list[str]):
        self.differences = differences
        super().__init__(f"data/ differs from data.dvc ({'; '.join(differences)}): a run would train on data DVC "
                         "has not versioned and record a data hash that is not in the DVC cache. Run `dvc add data` "
                         "(and commit data.dvc), then run again.")


class PipelineFailed(RuntimeError):
    """A stage failed; carries what ran before it and the original error."""

    def __init__(self, outcomes: list[StageOutcome], cause: BaseException):
        self.outcomes, self.cause = outcomes, cause
        super().__init__(f"stage {outcomes[-1].stage} failed: {cause}")


@task(name="skipped", task_run_name="{stage} (up to date)")
def report_skipped(stage: str):
    """Shows an up-to-date stage in Prefect as a Completed run named Skipped."""
    return Completed(name="Skipped", message=f"{stage}: outputs match dvc.lock")


def _warn(message: str) -> None:
    """A warning in the flow run's log (the Prefect UI), or this module's log outside a flow run."""
    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logging.getLogger(__name__).warning(message)


def _retried(cfg: PipelineConfig, label: str, call: Callable[[], Any]) -> Any:
    """call(), retried on transient failures with params.yaml's `orchestration` backoff (flows/reliability.py)."""
    orchestration = cfg.orchestration
    return call_with_retries(label, call, orchestration.retries, orchestration.retry_delay_seconds, _warn)


def run_stage(name: str, cfg: PipelineConfig, paths: ArtifactPaths, cache: DvcStageCache,
              stale: set[str] | None = None) -> StageOutcome:
    """Run one stage unless DVC says it is up to date; record it in dvc.lock when it ran on the deps
    and params it started with (a change while it ran leaves it unrecorded, so the next run reruns it).
    `stale`: what one `dvc status` of the whole pipeline reported, while it still holds (no stage has run since);
    None asks DVC about this stage alone.

    Transient failures (flows/reliability.py) of the stage and of each DVC call are retried on their own
    (a busy dvc.lock after train must not rerun train); each attempt of the stage has its time limit."""
    started = time.perf_counter()

    def attempt() -> Any:
        with stage_deadline(name, cfg.orchestration.stage_timeout_minutes[name]):
            return load_stage(name)(cfg, paths)

    # The gate's champion is the registry's prod version: a git tag that DVC does not see move.
    moved = champion_moved(paths, cfg.gate.champion) if name == "gate" else None
    if moved:
        _warn(f"gate: rerun although DVC has it up to date: {moved}")
        up_to_date = False
    elif stale is not None:
        up_to_date = name not in stale
    else:
        up_to_date = _retried(cfg, f"{name} (DVC status)", lambda: cache.is_up_to_date(name))
    if up_to_date:
        report_skipped(name)
        clear_failure_report(paths, name)
        previous = read_result(paths, name)
        return StageOutcome(name, "skipped", time.perf_counter() - started,
                            previous.key_figure if previous else "")
    deps_before = _retried(cfg, f"{name} (DVC dep hashes)", lambda: cache.dep_hashes(name))
    result = _retried(cfg, name, attempt)
    clear_failure_report(paths, name)
    changes = _retried(cfg, f"{name} (dvc.lock record)", lambda: cache.record(name, deps_before, cfg.dump()))
    if changes:
        note = f"not recorded in dvc.lock: {'; '.join(changes)}. The next run reruns {name}."
        _warn(f"{name}: {note}")
        return StageOutcome(name, "unrecorded", time.perf_counter() - started, result.key_figure, note)
    return StageOutcome(name, "completed", time.perf_counter() - started, result.key_figure)


# Reports people read in the Prefect UI: (stage, file in its artifact folder, artifact key).
PUBLISHED_REPORTS = {"validate": ("report.md", "data-validation"), "prepare": ("contract.md", "split-contract"),
                     "gate": ("report.md", "gate-decision")}


def publish_report(stage: str, paths: ArtifactPaths, failure: BaseException | None = None) -> None:
    """Publish the stage's Markdown report as a Prefect artifact of this flow run: the one it wrote, or,
    when its data contract failed, the failing report (which never replaces the last good one on disk)."""
    if stage not in PUBLISHED_REPORTS:
        return
    filename, key = PUBLISHED_REPORTS[stage]
    if isinstance(failure, DataValidationError):
        markdown = render_markdown(failure.report)
    elif failure is None and (paths.stage_dir(stage) / filename).is_file():
        markdown = (paths.stage_dir(stage) / filename).read_text(encoding="utf-8")
    else:
        return
    create_markdown_artifact(markdown=markdown, key=key, description=f"{stage} report, {paths.root.name}")


@flow(name="training_pipeline")
def training_pipeline(overrides: list[str] | None = None, project: str = ".") -> list[StageOutcome]:
    """validate -> prepare -> train -> distill -> evaluate -> export -> quantize -> gate, on the project at `project`.

    `overrides` are `section.key=value` strings written into params.yaml first, as `dvc exp run -S` does.
    Holds the workspace lock throughout: another run, `tunegate stage` or `dvc repro` here fails clearly.
    """
    paths = ArtifactPaths(Path(project).resolve())
    with workspace_lock(paths, "training_pipeline flow"):  # `tunegate run` holds it already, under its own name
        return _run_pipeline(paths, overrides)


def _run_pipeline(paths: ArtifactPaths, overrides: list[str] | None) -> list[StageOutcome]:
    cache = DvcStageCache(paths.root)
    cache.check_idle()  # a `dvc repro` in progress here holds DVC's lock: say so before touching anything
    differences = data_differences(paths.root)
    if differences:
        raise UntrackedDataChange(differences)
    # A run killed between the two renames of an output swap left the last good output under its .old name:
    # put it back before DVC is asked what is up to date, so it counts as the output it is.
    for restored in recover_swaps(paths.root / "artifacts"):
        _warn(f"restored {restored.relative_to(paths.root)} (the last good output) after an interrupted swap")
    if overrides:
        write_overrides(paths.params, overrides)
    cfg = load_config(paths.params)
    # One `dvc status` for every stage while nothing has run: a run with nothing to do (a scheduled one, a CI job on
    # a commit whose dvc.lock is current) asks DVC once. Once a stage has run, its outputs may make the stages after
    # it stale, so each of those asks DVC about itself.
    stale: set[str] | None = _retried(cfg, "DVC status", cache.stale)
    outcomes: list[StageOutcome] = []
    for name in STAGES:
        started = time.perf_counter()
        try:
            outcomes.append(run_stage(name, cfg, paths, cache, stale))
        except Exception as exc:
            outcomes.append(StageOutcome(name, "failed", time.perf_counter() - started, type(exc).__name__))
            publish_report(name, paths, exc)  # a failed contract's report is the one people need
            raise PipelineFailed(outcomes, exc) from exc
        if outcomes[-1].status in ("completed", "unrecorded"):
            stale = None
            publish_report(name, paths)
    return outcomes
