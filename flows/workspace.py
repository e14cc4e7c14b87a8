"""One run per workspace: an flock'ed file under .tunegate/ that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths

# Locks this process holds, by lock file: (open file, depth). The flow takes the lock that
# `tunegate run` already holds (the CLI takes it first to fail before starting a Prefect server).
_held: dict[Path, list] = {}


class WorkspaceBusy(TunegateError):
    """Another tunegate run or stage holds this workspace."""

    def __init__(self, lock_file: Path, holder: dict):
        self.lock_file, self.holder = lock_file, holder
        who = (f"`{holder['command']}` (pid {holder['pid']}, since {holder['started']})"
               if {"command", "pid", "started"} <= holder.keys() else "another process")
        super().__init__(f"this workspace is busy: {who} is running here (lock {lock_file}). "
                         "Wait for it to finish, or stop it, then run again.")


def read_holder(lock_file: Path) -> dict:
    """What the lock file says about its holder ({} when it says nothing readable)."""
    try:
        holder = json.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextmanager
def workspace_lock(paths: ArtifactPaths, command: str) -> Iterator[None]:
    """Hold the workspace for `command`, or raise WorkspaceBusy at once when another process holds it.

    The kernel drops an flock with its process, so a killed run never leaves the workspace locked.
    """
    lock_file = paths.run_lock.resolve()
    if lock_file in _held:  # re-entered by the same process (the CLI, then the flow)
        _held[lock_file][1] += 1
        try:
            yield
        finally:
            _held[lock_file][1] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WorkspaceBusy(lock_file, read_holder(lock_file)) from None
    try:
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "command": command,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        _held[lock_file] = [handle, 1]
        yield
    finally:
        _held.pop(lock_file, None)
        handle.close()  # releases the flock; the stale holder line is harmless (no flock, no holder)


def clear_failure_report(paths: ArtifactPaths, stage: str) -> None:
    """Remove artifacts/_failed/<stage> (and _failed/ once empty): the stage's outputs are good again."""
    failed = paths.failed_dir(stage)
    if failed.exists():
        shutil.rmtree(failed)
    if failed.parent.is_dir() and not any(failed.parent.iterdir()):
        failed.parent.rmdir()
