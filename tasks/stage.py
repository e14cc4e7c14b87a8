"""What every stage shell shares: the @task factory, the result record and stamping."""

from __future__ import annotations

import importlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.io import file_sha256, read_json, write_json
from tasks.paths import ArtifactPaths

# Failures worth a retry: I/O hiccups and memory pressure, never a failed check or bad data.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, TimeoutError)

STAMPED_LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu",
                     "great_expectations", "prefect", "dvc", "pandas", "numpy")


class StageResult(BaseModel):
    """Small record a stage returns and writes to artifacts/<stage>/result.json."""

    model_config = ConfigDict(frozen=True, extra="allow")

    stage: str
    key_figure: str


def _retry_only_transient(task_: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:  # noqa: BLE001 - any other failure is deterministic: do not retry
        return False
    return False


def stage_task(name: str, *, retries: int = 0):
    """Prefect @task for a stage shell; DVC owns caching, so Prefect's cache is off."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=5,
        retry_condition_fn=_retry_only_transient if retries else None,
        cache_policy=NO_CACHE,
    )


def write_result(out_dir: Path, result: StageResult) -> StageResult:
    write_json(out_dir / "result.json", result.model_dump(mode="json"))
    return result


def read_result(paths: ArtifactPaths, stage: str) -> StageResult | None:
    """The stage's last result, or None if it has never completed here."""
    path = paths.result(stage)
    return StageResult.model_validate(read_json(path)) if path.is_file() else None


def git_revision(root: Path) -> dict[str, Any]:
    """Commit SHA and whether the work tree had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in STAMPED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_stamp(paths: ArtifactPaths, cfg_dump: dict[str, Any], data_path: Path, extra: dict[str, Any]) -> dict:
    """Everything needed to repeat a run: config, data hash, code revision, library versions."""
    return {
        "seed": cfg_dump["seed"],
        "config": cfg_dump,
        "data": {"path": str(data_path), "sha256": file_sha256(data_path)},
        "git": git_revision(paths.root),
        "libraries": library_versions(),
        "platform": platform.platform(),
        **extra,
    }


def load_stage(name: str) -> Any:
    """The @task shell of a stage, imported on demand (each stage pulls in different libraries)."""
    from tasks.config import STAGES

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    module = importlib.import_module(f"tasks.{name}")
    return getattr(module, name)
