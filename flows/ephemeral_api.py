"""The Prefect API a `tunegate run` talks to: PREFECT_API_URL, or a temporary server of its own that
Ctrl-C does not reach (so an interrupted run can still report to it, and ends in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings


class DetachedServer(SubprocessASGIServer):
    """Prefect's temporary API server, started in a session of its own.

    Prefect starts it in the run's process group, so Ctrl-C killed it along with the run, and the
    interrupted flow then retried the dead API for minutes. Here SIGINT reaches the run only; the
    server is stopped when the run ends (and at exit).
    """

    _instances: dict[int | None, SubprocessASGIServer] = {}  # apart from Prefect's own ephemeral server

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Prefect's command (prefect.server.api.server.SubprocessASGIServer), plus start_new_session.
        return subprocess.Popen(
            args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                  "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                  "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1",
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            start_new_session=True,
        )


@contextmanager
def prefect_api() -> Iterator[None]:
    """Use PREFECT_API_URL when set; otherwise start a detached temporary server, point Prefect at it for
    the duration, and stop it on the way out (also on Ctrl-C)."""
    if PREFECT_API_URL.value():
        yield
        return
    server = DetachedServer()
    try:
        server.start()
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                _flush_logs()
    finally:
        server.stop()


def _flush_logs() -> None:
    """Send the run's queued logs while the server still answers (not at exit, after it is gone)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
