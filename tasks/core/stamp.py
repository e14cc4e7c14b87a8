"""Stamps: what a stage's output was made from (config, data hash, code revision, library versions)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core.io import file_sha256
from tasks.core.paths import ArtifactPaths

STAMPED_LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu",
                     "great_expectations", "prefect", "dvc", "pandas", "numpy")


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
