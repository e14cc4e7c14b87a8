"""The input data against data.dvc: whether the files on disk are the version DVC records."""

from __future__ import annotations

from contextlib import chdir
from pathlib import Path
from typing import Any


def _data_status(root: Path, dvc_file: str, granular: bool) -> tuple[list[str], dict[str, Any]]:
    """The paths `dvc_file` tracks, and DVC's data status of them (read whether or not the cache holds a copy)."""
    from dvc.repo import Repo
    from dvc.utils.serialize import load_yaml

    outs = [out["path"] for out in (load_yaml(str(root / dvc_file)) or {}).get("outs", [])]
    with chdir(root), Repo(str(root)) as repo:
        return outs, repo.data_status(targets=outs, granular=granular)


def data_differences(root: Path, dvc_file: str = "data.dvc", limit: int = 5) -> list[str]:
    """How the files that `dvc_file` tracks differ on disk from what it records (empty when they match,
    whether or not the DVC cache holds a copy); names at most `limit` files per kind of change."""
    if not (root / dvc_file).is_file():
        return [f"{dvc_file} does not exist"]
    _, status = _data_status(root, dvc_file, granular=True)
    differences = []
    for kind, files in sorted(status["uncommitted"].items()):
        files = sorted(f for f in files if not f.endswith("/")) or sorted(files)
        more = f" and {len(files) - limit} more" if len(files) > limit else ""
        differences.append(f"{kind}: {', '.join(files[:limit])}{more}")
    return differences


def tracked_data_unchanged(root: Path, dvc_file: str = "data.dvc") -> bool:
    """True when the files that `dvc_file` tracks are on disk exactly as it records them
    (whether or not the DVC cache holds a copy, as in a fresh clone)."""
    outs, status = _data_status(root, dvc_file, granular=False)
    return bool(outs) and not status["uncommitted"] and not status["committed"]
