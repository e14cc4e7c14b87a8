"""What every stage shell shares: the @task factory and the result record."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.core.io import read_json, write_json
from tasks.core.paths import ArtifactPaths


class StageResult(BaseModel):
    """Small record a stage returns and writes to artifacts/<stage>/result.json."""

    model_config = ConfigDict(frozen=True, extra="allow")

    stage: str
    key_figure: str


def stage_task(name: str):
    """Prefect @task for a stage shell; DVC owns caching, so Prefect's cache is off. No Prefect retries:
    the flow retries transient failures itself, with the backoff and time limits of params.yaml's
    `orchestration` section (flows/reliability.py)."""
    return functools.partial(StageTask, name)


class StageTask:
    """A stage shell: `.fn` is the stage's function (what `tunegate stage` and so `dvc repro` run), and calling it
    runs it as its Prefect task (what the flow does). The task is built on the first call, so a stage process that
    only runs `.fn` never imports Prefect (about 2.5 s of CPU, once per stage of every `dvc repro`)."""

    def __init__(self, name: str, fn: Any) -> None:
        functools.update_wrapper(self, fn)
        self.name, self.fn, self._task = name, fn, None

    def prefect_task(self) -> Any:
        if self._task is None:
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            self._task = task(name=self.name, cache_policy=NO_CACHE)(self.fn)
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.prefect_task()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:  # the rest of a Prefect task (submit, with_options, ...)
        if attribute.startswith("__") or attribute == "_task":
            raise AttributeError(attribute)
        return getattr(self.prefect_task(), attribute)


def write_result(out_dir: Path, result: StageResult) -> StageResult:
    write_json(out_dir / "result.json", result.model_dump(mode="json"))
    return result


def read_result(paths: ArtifactPaths, stage: str) -> StageResult | None:
    """The stage's last result, or None if it has never completed here."""
    path = paths.result(stage)
    return StageResult.model_validate(read_json(path)) if path.is_file() else None


def load_stage(name: str) -> Any:
    """The @task shell of a stage, imported on demand (each stage pulls in different libraries)."""
    from tasks.core.config import STAGES

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    module = importlib.import_module(f"tasks.{name}")
    return getattr(module, name)
