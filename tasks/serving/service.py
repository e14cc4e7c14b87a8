"""Run the HTTP service under uvicorn: one process, or several workers that split the cores between them."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from tasks.core.errors import TunegateError
from tasks.runtime.settings import ServeSettings
from tasks.serving.metrics import MULTIPROC_ENV
from tasks.serving.scoring import cores, thread_plan

log = logging.getLogger("tasks.serving")

# Workers > 1 are fresh interpreters started by uvicorn: they rebuild the app from these (JSON).
SETTINGS_ENV = "TUNEGATE_SERVE_SETTINGS_JSON"
PROJECT_ENV = "TUNEGATE_SERVE_PROJECT"
APP_FACTORY = "tasks.serving.service:app_from_environment"


class ServiceEnvironmentError(TunegateError):
    """A worker started without the settings its runner passes in the environment."""


def tokenizer_environment(threads: int) -> dict[str, str]:
    """Variables that keep the tokenizer's Rayon pool within a worker's share of the cores (set before load)."""
    return {"RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}


def log_config() -> dict:
    """uvicorn's logging, plus this package's logger (start-up warnings, reloads) on the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["tasks.serving"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def app_from_environment():
    """The app of one worker (uvicorn factory=True): settings and project from the runner's environment."""
    from tasks.serving.app import create_app

    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise ServiceEnvironmentError(f"{SETTINGS_ENV} is not set: start the service with `tunegate serve`")
    settings = ServeSettings.model_validate(json.loads(raw), strict=False)
    return create_app(settings, Path(os.environ.get(PROJECT_ENV, ".")))


def exit_cleanly(signum: int, _frame: object) -> None:
    """SIGTERM is a requested stop: uvicorn drains and stops the app, then raises the signal again for the handler
    it found (this one), so the process exits 0 instead of dying by the signal; before uvicorn runs, it just exits."""
    raise SystemExit(0)


def run_service(settings: ServeSettings, project: Path) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn drains requests in flight, then the lifespan stops the batcher)."""
    import uvicorn

    from tasks.runtime.settings import api_keys

    api_keys(settings)  # a missing serve.api_keys_file fails here, in one line, not in every worker
    threads, oversubscribed = thread_plan(settings, cores())
    if oversubscribed:
        log.warning(oversubscribed)
    for name, value in tokenizer_environment(threads).items():
        os.environ.setdefault(name, value)  # a value the user set wins
    signal.signal(signal.SIGTERM, exit_cleanly)
    common = dict(host=settings.host, port=settings.port, http="httptools", loop="uvloop", access_log=False,
                  log_config=log_config(), timeout_graceful_shutdown=max(1, int(settings.request_timeout_s) + 1))
    if settings.workers == 1:
        from tasks.serving.app import create_app

        uvicorn.run(create_app(settings, project), **common)
        return
    # Each worker writes its metrics to files here; /metrics of any worker sums them (MultiProcessCollector).
    metrics_dir = tempfile.mkdtemp(prefix="tunegate-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
    os.environ[PROJECT_ENV] = str(Path(project).resolve())
    try:
        uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
