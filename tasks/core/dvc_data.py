"""The input data against data.dvc: whether the files on disk are the version DVC records, and getting them there
(from the DVC remote, or the packaged default data when that is what data.dvc records)."""

from __future__ import annotations

import shutil
from contextlib import chdir
from pathlib import Path
from typing import Any

from tasks.core.errors import TunegateError
from tasks.core.vcs import dvc_result, tracked_paths


class DataUnavailable(TunegateError):
    """The data data.dvc records is nowhere: not in the DVC remote, and not the packaged default data."""


def _data_status(root: Path, dvc_file: str, granular: bool) -> tuple[list[str], dict[str, Any]]:
    """The paths `dvc_file` tracks, and DVC's data status of them (read whether or not the cache holds a copy)."""
    from dvc.repo import Repo

    outs = tracked_paths(root, dvc_file)
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


def dvc_pull(root: Path) -> str | None:
    """`dvc pull`: the data and every stage output dvc.lock records, from the DVC remote. None when it worked,
    else why not (the last lines DVC printed), for the caller to warn with: the pipeline rebuilds what is missing."""
    done = dvc_result(root, "pull")
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or f"dvc pull exited {done.returncode}"


def restore_default_data(root: Path, dvc_file: str = "data.dvc") -> bool:
    """When the data `dvc_file` tracks is absent (not in the DVC remote, or no remote) and it is exactly the packaged
    default data (`tunegate data default`), put that copy in place: True when it did. A project with data of its
    own needs a DVC remote (there is no other copy of it); raises DataUnavailable when the default is not that data."""
    from tasks.core.data import materialise_default_data

    outs = tracked_paths(root, dvc_file)
    if len(outs) != 1 or (root / outs[0]).exists():
        return False
    folder = root / outs[0]
    materialise_default_data(folder)
    differences = data_differences(root, dvc_file)
    if differences:
        shutil.rmtree(folder)  # not the data data.dvc records: leave nothing that looks like it
        raise DataUnavailable(f"{outs[0]}/ is not in the DVC remote (dvc pull could not fetch it) and is not the "
                              f"packaged default data ({'; '.join(differences)}): the pipeline cannot run without "
                              'it. Configure the DVC remote for CI (docs/registry.md, "CI promotion") and `dvc push` '
                              "the data to it.")
    return True
