"""The Prefect flow: the stages in DAG order, each skipped when DVC says it is up to date."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from tasks.core.config import STAGES, PipelineConfig, load_config, write_overrides
from tasks.contracts.report import DataValidationError, render_markdown
from tasks.core.dvc_cache import DvcStageCache
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import load_stage, read_result


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # completed | skipped | failed
    seconds: float
    key_figure: str


class PipelineFailed(RuntimeError):
    """A stage failed; carries what ran before it and the original error."""

    def __init__(self, outcomes: list[StageOutcome], cause: BaseException):
        self.outcomes, self.cause = outcomes, cause
        super().__init__(f"stage {outcomes[-1].stage} failed: {cause}")


@task(name="skipped", task_run_name="{stage} (up to date)")
def report_skipped(stage: str):
    """Shows an up-to-date stage in Prefect as a Completed run named Skipped."""
    return Completed(name="Skipped", message=f"{stage}: outputs match dvc.lock")


def run_stage(name: str, cfg: PipelineConfig, paths: ArtifactPaths, cache: DvcStageCache) -> StageOutcome:
    """Run one stage unless DVC says it is up to date; record it in dvc.lock when it runs."""
    started = time.perf_counter()
    if cache.is_up_to_date(name):
        report_skipped(name)
        previous = read_result(paths, name)
        return StageOutcome(name, "skipped", time.perf_counter() - started,
                            previous.key_figure if previous else "")
    result = load_stage(name)(cfg, paths)
    cache.record(name)
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
    """validate -> prepare -> train -> evaluate -> export -> quantize -> gate, on the project at `project`.

    `overrides` are `section.key=value` strings written into params.yaml first, as `dvc exp run -S` does.
    """
    paths = ArtifactPaths(Path(project).resolve())
    if overrides:
        write_overrides(paths.params, overrides)
    cfg = load_config(paths.params)
    cache = DvcStageCache(paths.root)
    outcomes: list[StageOutcome] = []
    for name in STAGES:
        started = time.perf_counter()
        try:
            outcomes.append(run_stage(name, cfg, paths, cache))
        except Exception as exc:
            outcomes.append(StageOutcome(name, "failed", time.perf_counter() - started, type(exc).__name__))
            publish_report(name, paths, exc)  # a failed contract's report is the one people need
            raise PipelineFailed(outcomes, exc) from exc
        if outcomes[-1].status == "completed":
            publish_report(name, paths)
    return outcomes
