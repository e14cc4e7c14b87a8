"""What every stage shell shares: the @task factory and the result record."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
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
    return task(name=name, cache_policy=NO_CACHE)


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
