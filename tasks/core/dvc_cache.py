"""DVC owns the cache: ask it whether a stage is up to date, and record stages run outside `dvc repro`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path


class DvcStageCache:
    """Stage freshness and bookkeeping through DVC's Python API, on the repo at `root`."""

    def __init__(self, root: Path):
        if not (root / ".dvc").is_dir():
            raise FileNotFoundError(f"{root} is not a DVC repository: run `dvc init` (make run does)")
        self.root = root
        # DVC announces each dvc.lock update at INFO; the flow's summary already says what ran.
        logging.getLogger("dvc").setLevel(logging.WARNING)

    @contextmanager
    def _repo(self) -> Iterator:
        from dvc.repo import Repo

        # DVC resolves stage paths against the working directory: work from the repo root.
        with chdir(self.root), Repo(str(self.root)) as repo:
            yield repo

    def is_up_to_date(self, stage: str) -> bool:
        """True when dvc.lock matches the stage's current deps, params and outs."""
        with self._repo() as repo:
            return not repo.status(targets=[stage])

    def record(self, stage: str) -> None:
        """Write the stage's deps/params/outs hashes to dvc.lock and its outs to the cache."""
        with self._repo() as repo:
            repo.commit(stage, force=True)


def tracked_data_unchanged(root: Path, dvc_file: str = "data.dvc") -> bool:
    """True when the files that `dvc_file` tracks are on disk exactly as it records them
    (whether or not the DVC cache holds a copy, as in a fresh clone)."""
    import yaml
    from dvc.repo import Repo

    outs = [out["path"] for out in yaml.safe_load((root / dvc_file).read_text()).get("outs", [])]
    with chdir(root), Repo(str(root)) as repo:
        status = repo.data_status(targets=outs, granular=False)
    return bool(outs) and not status["uncommitted"] and not status["committed"]
