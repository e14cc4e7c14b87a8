"""Where train.base_model comes from: a packaged model, a local folder or a hub id (no torch needed)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tasks.core.errors import TunegateError

PYPI_PREFIX = "pypi:"


class ModelSourceError(TunegateError, ValueError):
    """train.base_model names no local folder, installed model package or hub id we can load."""


def resolve_base_model(spec: str, root: Path) -> tuple[str, dict[str, Any]]:
    """Turn train.base_model into something from_pretrained loads, plus provenance for the stamp.

    `pypi:<distribution>`: a model folder shipped inside an installed PyPI package (offline);
    an existing folder (relative to the project root): used as is; anything else: a hub id.
    """
    if spec.startswith(PYPI_PREFIX):
        dist = spec[len(PYPI_PREFIX):]
        module_name = dist.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelSourceError(f"{spec}: package {dist!r} is not installed (pip install {dist})") from exc
        folder = Path(module.get_model_path()) if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
        if not (folder / "config.json").is_file():
            raise ModelSourceError(f"{spec}: no model folder with config.json at {folder}")
        from importlib.metadata import version
        return str(folder), {"source": "pypi", "package": dist, "version": version(dist), "path": str(folder)}
    local = Path(spec) if Path(spec).is_absolute() else root / spec
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{local} is a folder but holds no config.json")
        return str(local), {"source": "local", "path": str(local)}
    if spec.startswith((".", "/")) or spec.count("/") > 1:
        raise ModelSourceError(f"train.base_model {spec!r}: no such folder")
    return spec, {"source": "hub", "id": spec}
