"""DVC owns the cache: ask it whether a stage is up to date, and record stages run outside `dvc repro`."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from tasks.core.config import MISSING, lookup
from tasks.core.errors import TunegateError
from tasks.core.lock_cpu import record_lock_cpu
from tasks.core.paths import ArtifactPaths

log = logging.getLogger(__name__)

# How long a call waits for DVC's repo lock once a run holds the workspace: only a short DVC command
# (or a `dvc repro` whose stage command is about to fail on the workspace lock) can hold it then.
LOCK_PATIENCE_S = 30.0


class NotADvcRepository(TunegateError, FileNotFoundError):
    """The project folder has no .dvc/."""


class DvcBusy(TunegateError):
    """Another DVC process (e.g. `dvc repro`) holds DVC's lock on this repository."""

    def __init__(self, root: Path):
        super().__init__(f"another DVC command (e.g. `dvc repro`) is running in {root}: it holds DVC's lock "
                         f"{root / '.dvc' / 'tmp' / 'lock'}. Wait for it to finish, then run again.")


class DvcStageCache:
    """Stage freshness and bookkeeping through DVC's Python API, on the repo at `root`."""

    def __init__(self, root: Path):
        if not (root / ".dvc").is_dir():
            raise NotADvcRepository(f"{root} is not a DVC repository: run `dvc init` (make run does)")
        self.root = root
        import dvc  # noqa: F401 - importing dvc sets its loggers to INFO: import first, then quiet them

        # DVC announces each dvc.lock update at INFO; the flow's summary already says what ran.
        logging.getLogger("dvc").setLevel(logging.WARNING)

    @contextmanager
    def _repo(self) -> Iterator:
        from dvc.repo import Repo

        # DVC resolves stage paths against the working directory: work from the repo root.
        with chdir(self.root), Repo(str(self.root)) as repo:
            yield repo

    def _call(self, action: Callable[[Any], Any], patience_s: float = LOCK_PATIENCE_S) -> Any:
        """action(repo), retried while another DVC process holds the repo lock, for up to patience_s."""
        from dvc.lock import LockError

        deadline = time.monotonic() + patience_s
        for attempt in itertools.count():
            try:
                with self._repo() as repo:
                    return action(repo)
            except LockError:
                if time.monotonic() >= deadline:
                    raise DvcBusy(self.root) from None
                if attempt == 0:
                    log.warning("waiting up to %.0f s for DVC's lock in %s (another DVC command is running there)",
                                patience_s, self.root)
                time.sleep(1.0)

    def check_idle(self) -> None:
        """Raise DvcBusy at once (after DVC's own few seconds of retries) when another DVC process holds the repo."""

        def probe(repo: Any) -> None:
            with repo.lock:
                pass

        self._call(probe, patience_s=0)

    def is_up_to_date(self, stage: str) -> bool:
        """True when dvc.lock matches the stage's current deps, params and outs."""
        return not self._call(lambda repo: repo.status(targets=[stage]))

    def stale(self) -> set[str]:
        """What `dvc status` reports out of date now, all at once: the names of dvc.yaml's stages (and .dvc files)
        whose dvc.lock entries differ from their deps, params and outs. Every status call parses dvc.yaml and
        dvc.lock again, so one call for the whole pipeline costs about a quarter of eight one-stage calls."""
        return set(self._call(lambda repo: repo.status()))

    def dep_hashes(self, stage: str) -> dict[str, str]:
        """The stage's file and folder deps as DVC hashes them now: {path: md5}."""
        from dvc.dependency.param import ParamsDependency

        def hashes(repo: Any) -> dict[str, str]:
            (found,) = repo.stage.collect(stage)
            return {dep.def_path: dep.get_hash().value for dep in found.deps
                    if not isinstance(dep, ParamsDependency) and dep.exists}

        return self._call(hashes)

    def record(self, stage: str, deps_before: dict[str, str], params_ran: dict[str, Any]) -> list[str]:
        """Write the stage's deps/params/outs hashes to dvc.lock and its outs to the cache, only if the
        deps are still as hashed before the run (`deps_before`) and params.yaml still holds the values
        it ran with (`params_ran`, in params.yaml's shape). Returns what changed; on a change, dvc.lock
        is left as it was, so the stage counts as stale and the next run reruns it. When the stage's entry
        changed, this host's CPU goes into the record beside dvc.lock (tasks/core/lock_cpu.py); an entry
        reproduced byte for byte keeps the CPU it was recorded on."""
        lock_file = self.root / "dvc.lock"
        previous = lock_file.read_bytes() if lock_file.is_file() else None
        entry_before = _lock_entry(lock_file, stage) if previous is not None else {}
        self._call(lambda repo: repo.commit(stage, force=True))
        # dvc commit hashes what is on disk when it runs; compare that with what the stage ran with.
        entry = _lock_entry(lock_file, stage)
        changes = recorded_changes(entry, deps_before, params_ran)
        if changes:
            _restore(lock_file, previous)
        elif entry != entry_before:
            record_lock_cpu(ArtifactPaths(self.root), stage)
        return changes


def recorded_changes(entry: dict[str, Any], deps_before: dict[str, str], params_ran: dict[str, Any]) -> list[str]:
    """How a dvc.lock stage entry differs from the deps and params a run started with, one line each."""
    changes = []
    for dep in entry.get("deps", []):
        before = deps_before.get(dep["path"])
        if before is not None and dep.get("md5") != before:
            changes.append(f"{dep['path']} changed while the stage ran")
    for file, values in entry.get("params", {}).items():
        for key, now in values.items():
            changes += [f"{file} {changed}" for changed in _param_changes(key, now, lookup(params_ran, key))]
    return changes



def _param_changes(key: str, now: Any, ran: Any) -> list[str]:
    """The leaf keys under `key` whose value in params.yaml (`now`) is not the one the stage ran with."""
    if isinstance(now, dict) and isinstance(ran, dict):
        return [change for sub in {**now, **ran}
                for change in _param_changes(f"{key}.{sub}", now.get(sub, MISSING), ran.get(sub, MISSING))]
    if ran is MISSING or now == ran:
        return []
    return [f"{key} is {_short(now)}, but the stage ran with {_short(ran)}"]


def _short(value: Any, limit: int = 80) -> str:
    text = "(absent)" if value is MISSING else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _lock_entry(lock_file: Path, stage: str) -> dict[str, Any]:
    # DVC's own YAML 1.2 reader: `5e-05` is a float here, as in DVC's status.
    from dvc.utils.serialize import load_yaml

    return (load_yaml(str(lock_file)) or {}).get("stages", {}).get(stage, {})


def _restore(lock_file: Path, previous: bytes | None) -> None:
    """Put dvc.lock back as it was before a record (atomically; removed when there was none)."""
    if previous is None:
        lock_file.unlink(missing_ok=True)
        return
    tmp = lock_file.with_name(f".{lock_file.name}.restore.tmp")
    tmp.write_bytes(previous)
    tmp.replace(lock_file)
