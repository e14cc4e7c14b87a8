"""What every command shares: the consoles, one way to report an expected error, the debug switch, signals that
end a command like Ctrl-C, and Prefect's quiet defaults."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def prefect_defaults() -> None:
    """Quiet, patient Prefect defaults; anything the user set wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def report_error(headline: str, exc: BaseException, debug: bool = False) -> None:
    """One clear message (headline, error class, its text); the traceback too when debugging."""
    if debug:
        import traceback

        errors.print("".join(traceback.format_exception(exc)), markup=False, highlight=False)
    errors.print(f"{headline}: {type(exc).__name__}", style="bold red")
    errors.print(str(exc), markup=False, highlight=False)


def debugging(args: argparse.Namespace) -> bool:
    """--debug or TUNEGATE_DEBUG=1: show tracebacks of expected errors too."""
    return bool(getattr(args, "debug", False)) or os.environ.get("TUNEGATE_DEBUG", "") not in ("", "0")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) end the run like Ctrl-C, so cleanup (the Prefect server
    this run started, the workspace lock) happens for them too."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
