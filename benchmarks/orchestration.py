"""What the Prefect flow costs beyond DVC when there is nothing to do: `dvc repro` with every stage up to date vs a
flow run (training_pipeline) with every stage up to date, on the real dvc.yaml of a finished run, side by side in
one run, rounds interleaved (a slow spell on a shared host hits both alike).

The flow is measured after the Prefect API is up (its start-up is reported apart: a deployment's worker or
`prefect server` has it up already): as `tunegate run` with PREFECT_API_URL set (a fresh process, like `dvc repro`:
the fair pair) and as training_pipeline called in this process (the flow machinery alone; the first call, which
imports the stage modules, is reported apart), and the imports a flow process pays before its first stage are timed
apart too (a fixed cost, not a per-stage one). Per-stage overhead = (flow seconds - dvc repro seconds) / stages,
medians over the rounds; target < 1 s per stage.

Every stage must be up to date (`dvc status` clean), or the benchmark would retrain. A workspace whose stage deps
changed since the run (edited code) is measured on a scratch copy instead (--copy auto): a clone of its git
repository with the working tree laid over it, a DVC cache of its own, and `dvc commit --force` recording the
current deps against the outputs already there (their bytes untouched); the project itself is never written to.
Ends with one JSON line (also written to --out):
  {"dvc_repro_seconds": ..., "flow_seconds": ..., "flow_in_process_seconds": ..., "api_startup_seconds": ...,
   "per_stage_overhead_seconds": ..., "stages": 7, "target": ..., ...}

    python benchmarks/orchestration.py [--project .] [--repeats 3] [--warmup 1] [--copy auto|always|never] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.config import STAGES  # noqa: E402
from tasks.core.io import write_json  # noqa: E402

TARGET_PER_STAGE_S = 1.0
IMPORTS = "import flows.cli, flows.ephemeral_api, flows.pipeline"  # what `tunegate run` loads before the flow starts
# Not copied into a scratch copy: the environment, DVC's cache and state, run state, caches of tools.
COPY_IGNORE = (".git", ".venv", "venv", ".tunegate", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache",
               ".ruff_cache", "node_modules")


class NotUpToDate(RuntimeError):
    """A stage is not up to date: timing it would run (and rewrite) it; carries `dvc status`'s words."""


class BenchmarkError(RuntimeError):
    """A timed command failed, or a no-op run changed dvc.lock / ran a stage; carries the evidence."""


# ---- pure figures -------------------------------------------------------------------------------------------------

def per_stage_overhead(flow_seconds: float, dvc_seconds: float, stages: int) -> float:
    """What the flow adds to each stage beyond DVC's own up-to-date check (seconds; negative = the flow is faster)."""
    return (flow_seconds - dvc_seconds) / stages


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# ---- commands -----------------------------------------------------------------------------------------------------

def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with this venv's bin first on PATH (DVC stage commands find `tunegate` there)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env or tool_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(command)} failed ({done.returncode}) in {cwd}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = run(command, cwd, env)
    return time.perf_counter() - started, done.stdout + done.stderr


def dvc() -> str:
    return str(Path(sys.executable).parent / "dvc")


def stale_stages(root: Path) -> dict:
    """`dvc status`'s findings ({} when every stage is up to date)."""
    done = run([dvc(), "status", "--json"], root)
    return json.loads(done.stdout or "{}")


def lock_digest(root: Path) -> str:
    return hashlib.sha256((root / "dvc.lock").read_bytes()).hexdigest()


# ---- the project to time ------------------------------------------------------------------------------------------

def scratch_copy(project: Path, into: Path) -> Path:
    """A copy of the project whose dvc.lock records its current deps: a clone of its git repository (tags too: the
    gate asks the registry whether prod moved), the working tree laid over it, a DVC cache of its own."""
    root = into / "project"
    run(["git", "clone", "-q", "--no-hardlinks", str(project), str(root)], into)
    by_name = shutil.ignore_patterns(*COPY_IGNORE)

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(by_name(folder, names))
        if Path(folder) == project / ".dvc":
            skipped |= {"cache", "tmp"} & set(names)  # the copy's cache is its own (filled by dvc commit)
        return skipped

    shutil.copytree(project, root, dirs_exist_ok=True, symlinks=True, ignore=ignore)
    git = ["git", "-c", "user.email=bench@tunegate.invalid", "-c", "user.name=orchestration benchmark"]
    run(["git", "add", "-A"], root)
    run([*git, "commit", "-q", "--allow-empty", "-m", "working tree as benchmarked"], root)
    run([dvc(), "commit", "--force", "--quiet"], root)  # outputs as they are, against the deps as they are
    return root


def project_to_time(project: Path, copy: str, scratch: Path) -> tuple[Path, str]:
    """(root to time, "in_place" | "copy"); NotUpToDate when a stage is stale and copying is not allowed."""
    stale = stale_stages(project)
    if copy == "always" or (stale and copy == "auto"):
        root = scratch_copy(project, scratch)
        still = stale_stages(root)
        if still:
            raise NotUpToDate(f"stages still not up to date in the scratch copy (outputs missing?): {still}")
        return root, "copy"
    if stale:
        raise NotUpToDate(f"not every stage is up to date in {project} (a run would retrain): "
                          f"{', '.join(sorted(stale))}; finish a run first, or pass --copy auto")
    return project, "in_place"


# ---- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project with a finished run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each: dvc repro, tunegate run, flow call)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (file cache, imports)")
    parser.add_argument("--copy", choices=("auto", "always", "never"), default="auto",
                        help="time a scratch copy: when a stage is stale (auto), always, or never (fail instead)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    args.project = args.project.resolve()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tunegate-orchestration-") as tmp:
        scratch = Path(tmp)
        # A Prefect home of its own (no analytics, patient start): the user's runs and settings are not touched.
        prefect_env = {"PREFECT_HOME": str(scratch / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
        os.environ.update(prefect_env)
        os.environ.pop("PREFECT_API_URL", None)
        started = time.perf_counter()
        root, mode = project_to_time(args.project, args.copy, scratch)
        prepare_seconds = time.perf_counter() - started
        run([dvc(), "status", "--quiet"], root)  # untimed: DVC's hash cache of the outputs is warm for all
        result = measure(root, args.repeats, args.warmup)
    result.update(mode=mode, project=str(args.project), prepare_seconds=round(prepare_seconds, 1))
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result))
    return result


def measure(root: Path, repeats: int, warmup: int) -> dict:
    """Rounds of (dvc repro, tunegate run, in-process flow) with the API up; the figures and the checks."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ephemeral_api import DetachedServer
    from flows.pipeline import training_pipeline

    before = lock_digest(root)
    server = DetachedServer()
    started = time.perf_counter()
    server.start()
    api_startup = time.perf_counter() - started
    dvc_s, cli_s, flow_s, import_s, first_call, statuses = [], [], [], [], None, set()
    try:
        env = tool_env({"PREFECT_API_URL": server.api_url})
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            # Warm-up rounds (file cache; the in-process flow imports the stages) are not counted; the first
            # in-process call is reported apart.
            for round_ in range(warmup + repeats):
                counted = round_ >= warmup
                seconds, output = timed([dvc(), "repro"], root)
                if "up to date" not in output:
                    raise BenchmarkError(f"dvc repro did not find everything up to date:\n{output[-2000:]}")
                if counted:
                    dvc_s.append(seconds)
                seconds, output = timed([str(Path(sys.executable).parent / "tunegate"), "run", "--project",
                                         str(root)], root, env)
                if counted:
                    cli_s.append(seconds)
                    # What every flow process pays before its first stage (a worker's flow run too): imports.
                    import_s.append(timed([sys.executable, "-c", IMPORTS], root)[0])
                started = time.perf_counter()
                outcomes = training_pipeline(project=str(root))
                seconds = time.perf_counter() - started
                statuses |= {o.status for o in outcomes}
                if counted:
                    flow_s.append(seconds)
                first_call = seconds if first_call is None else first_call
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the in-process runs' logs, while the API still answers
        server.stop()
    if statuses != {"skipped"} or lock_digest(root) != before:
        raise BenchmarkError(f"a no-op run ran something: stage statuses {sorted(statuses)}, dvc.lock "
                             f"{'unchanged' if lock_digest(root) == before else 'changed'}")
    stages = len(STAGES)
    dvc_median, cli_median, flow_median = median(dvc_s), median(cli_s), median(flow_s)
    overhead = round(per_stage_overhead(cli_median, dvc_median, stages), 3)
    return {
        "dvc_repro_seconds": dvc_median, "flow_seconds": cli_median, "flow_in_process_seconds": flow_median,
        "api_startup_seconds": round(api_startup, 2), "flow_process_imports_seconds": median(import_s),
        "per_stage_overhead_seconds": overhead,
        "per_stage_overhead_in_process_seconds": round(per_stage_overhead(flow_median, dvc_median, stages), 3),
        "stages": stages, "repeats": repeats, "warmup": warmup,
        "target": f"per_stage_overhead_seconds < {TARGET_PER_STAGE_S:g}", "pass": overhead < TARGET_PER_STAGE_S,
        "first_in_process_call_seconds": round(first_call, 3) if first_call is not None else None,
        "runs": {"dvc_repro": [round(s, 3) for s in dvc_s], "tunegate_run": [round(s, 3) for s in cli_s],
                 "in_process": [round(s, 3) for s in flow_s], "imports": [round(s, 3) for s in import_s]},
    }


if __name__ == "__main__":
    main()
