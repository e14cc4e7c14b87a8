"""What Prefect prints in the terminal: user mistakes and Ctrl-C once, as the CLI words them.

Prefect's task and flow engines log every exception with its traceback, then log the final state
with the exception's message again; for a failed data contract that was the whole report three or
four times. The CLI prints a TunegateError itself, so the terminal drops Prefect's copies of it
(the Prefect API and UI still get every record). Unexpected errors keep their tracebacks.
"""

from __future__ import annotations

import logging

from tasks.core.errors import TunegateError

QUIET = (TunegateError, KeyboardInterrupt)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """exc and its causes (PipelineFailed wraps the stage's error), without looping."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        seen.append(exc)
        cause = exc.__cause__ or getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else None
    return seen


class QuietUserErrors(logging.Filter):
    """Drops records about a TunegateError or Ctrl-C: the traceback records themselves, and the
    'Finished in state Failed(...)' lines that repeat their messages (by exception class name)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()  # class names of exceptions that carry (or wrap) a user error

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            chain = _chain(record.exc_info[1])
            if any(isinstance(exc, QUIET) for exc in chain):
                self.names.update(type(exc).__name__ for exc in chain)
                return False
            return True
        message = record.getMessage()
        return not any(f"{name}: " in message or f"{name}(" in message for name in self.names)


def quiet_user_errors() -> QuietUserErrors:
    """Install the filter on every console handler Prefect configured (the root logger's)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet = QuietUserErrors()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(quiet)
    return quiet
