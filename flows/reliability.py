"""Reliability of flow runs: which failures are transient (retried with backoff) and per-stage time limits.

The one home of "transient": a failure that the same call, made again a little later, may not repeat (a
network or file-system hiccup, a lock another process holds briefly, a busy SQLite database). Everything
else (bad data, bad params, a failed check, a gate REJECT, a bug) fails the same way again: never retried.

Timeouts: a watchdog thread, not Prefect's task `timeout_seconds`. Stages run in process, inside or outside a
Prefect task; the watchdog raises StageTimeout (a named error with the stage, its limit and params key) in the
thread running the stage, wherever that is, and it also bounds the DVC calls around the stage. Prefect's own
timeout raises a TimeoutError subclass, which would read as transient (an OSError) and be retried. Like any
in-process timeout it interrupts Python code, not a single long native call (one huge matmul): the stage stops
at its next Python bytecode. What an interrupted stage leaves: nothing half-written (outputs are staged and
swapped in whole, tasks/core/io.staged_dir), and train keeps its checkpoints, so the next run resumes.
"""

from __future__ import annotations

import ctypes
import errno
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tasks.core.errors import TunegateError

T = TypeVar("T")

# OSError errnos that mean "busy / unreachable right now", not "missing / forbidden / full": a
# FileNotFoundError or PermissionError fails the same way on every retry.
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH,
                              errno.ENETDOWN, errno.EHOSTUNREACH, errno.ESTALE, errno.EIO})
# OSError subclasses that are transient whatever their errno.
TRANSIENT_OS_ERRORS = (ConnectionError, TimeoutError, BlockingIOError, InterruptedError)
# Named errors (module.class anywhere in the exception's MRO) of locks held briefly and API hiccups; by
# name, so classifying a failure never imports DVC or httpx. Our own WorkspaceBusy and DvcBusy are
# TunegateErrors (RegistryBusy too), but say "another run holds this for now": worth waiting for.
TRANSIENT_NAMES = frozenset({"dvc.lock.LockError", "zc.lockfile.LockError", "httpx.TransportError",
                             "flows.workspace.WorkspaceBusy", "tasks.core.dvc_cache.DvcBusy",
                             "tasks.registry.promote.RegistryBusy"})
SQLITE_BUSY_WORDS = ("database is locked", "database is busy", "database table is locked")


class StageTimeout(TunegateError):
    """A stage ran past orchestration.stage_timeout_minutes[stage]; the flow run fails, nothing half-written."""

    def __init__(self, stage: str, limit_minutes: float, ran_seconds: float):
        self.stage, self.limit_minutes, self.ran_seconds = stage, limit_minutes, ran_seconds
        super().__init__(f"stage {stage} ran {ran_seconds / 60:.1f} min, past its limit of {limit_minutes:g} min "
                         f"(orchestration.stage_timeout_minutes.{stage} in params.yaml); it was stopped. Its outputs "
                         "are the last good ones (nothing half-written is kept); train resumes from its "
                         "checkpoints on the next run. Raise the limit if the stage needs longer.")


class _Deadline(BaseException):
    """Raised asynchronously in the stage's thread by the watchdog. A BaseException, so a stage's own
    `except Exception` cannot swallow it; turned into StageTimeout at the deadline's edge."""


def _names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def _transient_alone(exc: BaseException) -> bool | None:
    """True/False when this exception alone decides; None when only its cause can tell."""
    if _names(exc) & TRANSIENT_NAMES:
        return True
    if isinstance(exc, TunegateError):  # StageTimeout too
        return False  # data, params, contracts, gate decisions, time limits: the same again on a retry
    if isinstance(exc, TRANSIENT_OS_ERRORS):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    if "sqlite3.OperationalError" in _names(exc):
        return any(words in str(exc).lower() for words in SQLITE_BUSY_WORDS)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if made again shortly; follows `raise ... from` causes (a library
    wrapping a connection reset is transient; a TunegateError is permanent whatever it wraps)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        decided = _transient_alone(current)
        if decided is not None:
            return decided
        current = current.__cause__
    return False


def retry_delays(retries: int, first_delay_s: float) -> list[float]:
    """Seconds to wait before retry 1..retries: first_delay_s, doubled after each retry."""
    return [first_delay_s * 2 ** attempt for attempt in range(retries)]


def call_with_retries(label: str, call: Callable[[], T], retries: int, first_delay_s: float,
                      warn: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> T:
    """call(), retried after a transient failure up to `retries` times with doubling delays; a permanent
    failure, or the last transient one, is raised as it is. Each retry is announced through `warn`."""
    delays = retry_delays(retries, first_delay_s)
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == retries or not is_transient(exc):
                raise
            warn(f"{label}: transient failure ({type(exc).__name__}: {exc}); retry {attempt + 1}/{retries} "
                 f"in {delays[attempt]:g} s")
        sleep(delays[attempt])
    raise AssertionError("unreachable: the loop returns or raises")


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule exc_type in thread_id at its next bytecode (None: cancel a scheduled one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc_type) if exc_type else None)


@contextmanager
def stage_deadline(stage: str, limit_minutes: float) -> Iterator[None]:
    """Run the body with a time limit: past it, the body is interrupted and StageTimeout raised."""
    target, started = threading.get_ident(), time.monotonic()
    lock, state = threading.Lock(), {"done": False, "fired": False}

    def expire() -> None:
        with lock:  # never fire once the body has finished: the exception would land in the caller
            if not state["done"]:
                state["fired"] = True
                _raise_in_thread(target, _Deadline)

    watchdog = threading.Timer(limit_minutes * 60, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            yield
        finally:
            with lock:
                state["done"] = True
            watchdog.cancel()
    except _Deadline:
        raise StageTimeout(stage, limit_minutes, time.monotonic() - started) from None
    finally:
        if state["fired"]:
            _raise_in_thread(target, None)  # fired as the body ended: drop it if it has not landed yet
