"""Stamps: what a stage's output was made from (config, data hash, base model, library versions).

A stamp is a DVC-tracked output, so it holds only what the inputs decide: no times, host names,
absolute paths or git state (those go to the run record, tasks/core/runlog.py). Two clones in
different folders, or a rerun on the same inputs, write the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core.io import file_sha256
from tasks.core.paths import ArtifactPaths

STAMPED_LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu",
                     "great_expectations", "prefect", "dvc", "pandas", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in STAMPED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def project_path(path: Path, root: Path) -> str:
    """`path` relative to the project root (POSIX form) when inside it; else as given."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return str(path)


def model_folder_sha256(folder: Path) -> str:
    """Hex SHA-256 of a model folder's top-level files (names and bytes): what from_pretrained reads,
    without the checkpoint subfolders a training folder may also hold."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def portable_provenance(provenance: dict[str, Any], spec: str) -> dict[str, Any]:
    """Base-model provenance that names no path of this machine: a packaged model by package and
    version, a local folder as train.base_model spells it plus a hash of its files, a hub model by id."""
    if provenance["source"] == "pypi":
        return {key: value for key, value in provenance.items() if key != "path"}
    if provenance["source"] == "local":
        return {"source": "local", "path": spec, "sha256": model_folder_sha256(Path(provenance["path"]))}
    return dict(provenance)


def build_stamp(paths: ArtifactPaths, cfg_dump: dict[str, Any], data_path: Path, extra: dict[str, Any]) -> dict:
    """Everything needed to repeat a run that the inputs decide: config, data hash, library versions."""
    return {
        "seed": cfg_dump["seed"],
        "config": cfg_dump,
        "data": {"path": project_path(data_path, paths.root), "sha256": file_sha256(data_path)},
        "libraries": library_versions(),
        **extra,
    }
