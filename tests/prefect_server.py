"""A real Prefect server and process worker for end-to-end tests: `prefect server start` on 127.0.0.1 with SQLite
in a temp folder, a `process` work pool and `prefect worker start` subprocesses; every process is ended on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # a dependency of distributed (prefect-dask): finds flow-run processes in sessions of their own

from tests.conftest import BIN

POOL = "tunegate"  # the work pool prefect.yaml's deployments name
SERVER_START_S = 180  # a shared 2-core host can take a minute to migrate the database and start the services
STOP_GRACE_S = 15


class PrefectProcessFailed(RuntimeError):
    """A Prefect CLI command or background process failed; carries its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    """A running `prefect server start` subprocess and the environment that talks to it."""

    url: str  # the API, e.g. http://127.0.0.1:4321/api
    env: dict[str, str]  # for CLI commands, workers and flow runs: PREFECT_API_URL, PATH with this venv's bin
    folder: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def _env_in(self, cwd: Path) -> dict[str, str]:
        """The environment of a command run in `cwd`: its project first on the import path, and PWD set, since
        prefect.yaml's pull step names the deployment's folder as "{{ $PWD }}" (a shell sets it; Popen does not)."""
        return {**self.env, "PWD": str(cwd),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), self.env.get("PYTHONPATH")]))}

    def cli(self, *args: str, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `prefect ARGS` against this server (the project at `cwd` first on the import path)."""
        env = self._env_in(cwd)
        done = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise PrefectProcessFailed(f"prefect {' '.join(args)} failed ({done.returncode}):\n"
                                       f"{done.stdout}\n{done.stderr}")
        return done

    def spawn(self, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
        """Start a long-running process against this server, in a session of its own; ended by stop()."""
        env = self._env_in(cwd)
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def start_worker(self, cwd: Path, pool: str = POOL) -> subprocess.Popen:
        """`prefect worker start --pool POOL` in `cwd` (flow runs it starts inherit its environment)."""
        name = f"worker-{len(self.processes)}"
        return self.spawn([str(BIN / "prefect"), "--no-prompt", "worker", "start", "--pool", pool, "--type",
                           "process", "--name", name, "--install-policy", "never"], cwd,
                          self.folder / f"{name}.log")

    def client(self):
        """A synchronous Prefect client on this server (use as a context manager)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        @contextlib.contextmanager
        def bound():
            with temporary_settings(updates={PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
                yield client

        return bound()

    def logs(self) -> str:
        """Every background process's output so far (server, workers): what a failing test should show."""
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-6000:]}"
                         for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        """End every process started here and everything they started (flow runs too), TERM first, then KILL."""
        for process in reversed(self.processes):  # workers before the server, so they can report their runs
            _end_family(process)
        self.processes.clear()


def _end_family(process: subprocess.Popen) -> None:
    """SIGTERM a process's group and every descendant (flow runs may sit in sessions of their own), then SIGKILL
    whatever is left after a grace period."""
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(process.pid)
        family = [parent, *parent.children(recursive=True)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    for proc in family[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=STOP_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1)  # reap it: no zombie left behind


def server_env(folder: Path, port: int) -> dict[str, str]:
    """The environment of the server and of everything that talks to it: its own home and SQLite file."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # DVC stage commands and flow runs find this venv
        "PREFECT_HOME": str(folder / "home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",  # nothing looks at it; saves building the UI's static files
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        # Workers and the scheduler poll every few seconds instead of every 10-60 s: runs start promptly.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",  # a run due in 5 s stays Scheduled until then (default: 10 s ahead)
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_LOGGING_LEVEL": "INFO",
    })
    return env


def wait_healthy(server: PrefectServer, timeout: float = SERVER_START_S) -> None:
    """Return once GET /api/health answers 200; raise with the server's output if it exits or never does."""
    process = server.processes[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectProcessFailed(f"prefect server exited ({process.returncode}):\n{server.logs()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise PrefectProcessFailed(f"prefect server not healthy after {timeout:.0f} s:\n{server.logs()}")


@contextlib.contextmanager
def prefect_server(folder: Path, wait: bool = True) -> Iterator[PrefectServer]:
    """A `prefect server start` on a free port of 127.0.0.1, SQLite under `folder`; stopped (with every worker
    and flow run started through it) on exit, failing test or not. `wait=False` yields at once (other set-up can
    overlap the server's start); call wait_healthy(server) before using it."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(folder, port)
    server = PrefectServer(url=env["PREFECT_API_URL"], env=env, folder=folder)
    # The processes run in sessions of their own, so a SIGTERM to pytest (a CI timeout) would orphan them: turn it
    # into KeyboardInterrupt, which runs this finally like a failing test does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.spawn([str(BIN / "prefect"), "--no-prompt", "server", "start", "--host", "127.0.0.1",
                      "--port", str(port), "--analytics-off", "--no-ui"], folder, folder / "server.log")
        if wait:
            wait_healthy(server)
        yield server
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def wait_for(predicate, timeout: float, what: str, server: PrefectServer, every: float = 1.0):
    """Poll `predicate` until it returns something truthy; fail with the server's and workers' logs if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{server.logs()}")
