"""Where the served model comes from: a folder, or the registry's version in a stage (followed as it moves)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tasks.core.errors import TunegateError
from tasks.core.io import file_sha256
from tasks.runtime.files import SERVING_FILE
from tasks.runtime.settings import REGISTRY_PREFIX

VERSION_HEX = 12  # hex digits of the model file's sha256 in a folder's version ("sha256:" + 12 hex)
# What a serving-only install (requirements/serve.txt) lacks to follow the registry.
FULL_INSTALL = "the full install (`make setup`), which brings gto and dvc"


class SourceError(TunegateError):
    """The model source has nothing servable: not a served folder, nothing in the stage, registry unreachable."""


@dataclass(frozen=True)
class Resolved:
    version: str  # registry version (v0.2.0), or "sha256:" + first 12 hex of a folder's model file
    folder: Path  # a served folder (serving.json, tokenizer.json, the model)


class ModelSource(Protocol):
    description: str  # for logs and /v2/models: "folder artifacts/quantize/onnx" or "registry prod"

    def resolve(self) -> Resolved:
        """The version to serve now (blocking: call it in a thread). Raises TunegateError when none is servable."""
        ...


def served_model_file(folder: Path) -> Path:
    """The model file a served folder's serving.json names; SourceError when the folder is not a served one."""
    serving = folder / SERVING_FILE
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder (serve.model names a served model folder, e.g. "
                          "artifacts/quantize/onnx, or registry:STAGE)")
    if not serving.is_file():
        raise SourceError(f"{folder} is not a served model folder: no {SERVING_FILE} (export writes one; serve "
                          "artifacts/quantize/onnx or a release folder)")
    try:
        model_file = json.loads(serving.read_text(encoding="utf-8"))["model_file"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{serving} cannot be read as a served folder's {SERVING_FILE} "
                          f"({type(exc).__name__}: {exc})") from exc
    model = folder / str(model_file)
    if not model.is_file():
        raise SourceError(f"{folder}: {SERVING_FILE} names the model file {model_file!r}, which is not there")
    return model


def version_of_sha256(sha256: str) -> str:
    """A folder's version from its model file's hex sha256: "sha256:" + its first VERSION_HEX digits."""
    return "sha256:" + sha256[:VERSION_HEX]


def folder_version(model: Path) -> str:
    """A folder's version: "sha256:" + the first 12 hex digits of its model file's sha256."""
    return version_of_sha256(file_sha256(model))


class FolderSource:
    """serve.model = a folder: its version is its model file's hash, so a folder replaced in place is a new version."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.description = f"folder {self.folder}"
        # (inode, size, mtime_ns) -> version: a poll every reload_seconds re-hashes the model only when it changed.
        self._seen: tuple[tuple[int, int, int], str] | None = None

    def resolve(self) -> Resolved:
        model = served_model_file(self.folder)
        stat = model.stat()
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, folder_version(model))
        return Resolved(self._seen[1], self.folder)


class RegistrySource:
    """serve.model = registry:STAGE: the version in STAGE (GTO tags), its release fetched through DVC into
    .tunegate/registry/<version> (tasks.registry; needs the full install, not requirements/serve.txt)."""

    def __init__(self, project: Path, stage: str):
        self.project = Path(project)
        self.stage = stage
        self.description = f"registry {stage}"

    def resolve(self) -> Resolved:
        try:  # lazily: gto and dvc are not part of the serving install
            from tasks.core.paths import ArtifactPaths
            from tasks.registry.fetch import fetch_release
            from tasks.registry.tags import allowed_stages, find_version, in_stage
        except ImportError as exc:
            raise SourceError(f"serve.model {REGISTRY_PREFIX}{self.stage} follows the registry, which needs "
                              f"{FULL_INSTALL}; this install lacks {exc.name or exc}. Serve a folder instead "
                              f"(serve.model: path/to/release)") from exc
        move = in_stage(self.project, self.stage)
        if move is None:
            try:
                stages = allowed_stages(self.project)
            except Exception:  # noqa: BLE001 - outside a git repository gto cannot read .gto: no registry at all
                stages = [self.stage]
            if self.stage not in stages:
                raise SourceError(f"stage {self.stage!r} is not one of the registry's stages "
                                  f"({', '.join(stages)}) in {self.project}")
            raise SourceError(f"no version is in the registry's {self.stage} stage of {self.project}: "
                              f"run `tunegate promote` first (or serve a folder)")
        folder = fetch_release(ArtifactPaths(self.project), find_version(self.project, move.version))
        return Resolved(move.version, folder)


def source_for(model: str, project: Path) -> ModelSource:
    """serve.model -> its source: registry:STAGE or a folder (relative to project)."""
    if model.startswith(REGISTRY_PREFIX):
        stage = model.removeprefix(REGISTRY_PREFIX).strip()
        if not stage:
            raise SourceError(f"serve.model {model!r} names no stage: write {REGISTRY_PREFIX}prod")
        return RegistrySource(Path(project), stage)
    folder = Path(model).expanduser()
    return FolderSource(folder if folder.is_absolute() else Path(project) / folder)
