"""One workspace, one run: the lock, what dvc.lock may record, Ctrl-C, data that DVC has not versioned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import flows.pipeline as pipeline
from flows.cli import main
from flows.pipeline import UntrackedDataChange, run_stage, training_pipeline
from flows.workspace import WorkspaceBusy, workspace_lock
from tasks.core.config import load_config, write_overrides
from tasks.core.dvc_cache import DvcBusy, DvcStageCache
from tasks.core.io import file_sha256
from tasks.core.lock_cpu import lock_cpus_on_disk
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult
from tests.conftest import BIN, run, tiny_params

# A second process that holds a lock until its stdin closes: (what it locks, how).
HOLD_WORKSPACE = ("from pathlib import Path; import sys; from flows.workspace import workspace_lock; "
                  "from tasks.core.paths import ArtifactPaths\n"
                  "with workspace_lock(ArtifactPaths(Path(sys.argv[1])), 'tunegate run'):\n"
                  "    print('held', flush=True); sys.stdin.read()")
HOLD_DVC_LOCK = ("import sys; from dvc.repo import Repo\n"
                 "repo = Repo(sys.argv[1]); repo.lock.lock(); print('held', flush=True); sys.stdin.read()")


def hold(code: str, root: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def release(holder: subprocess.Popen) -> None:
    if not holder.stdin.closed:
        holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def fake_stage(paths: ArtifactPaths, during=lambda: None):
    """A validate stage that writes its outs at once and calls `during` before it returns."""

    def stage(cfg, paths_):
        out = paths.stage_dir("validate")
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"stage": "validate", "key_figure": "fake"}))
        during()
        return StageResult(stage="validate", key_figure="fake")

    return lambda name: stage


def test_run_stage_records_a_stage_only_if_its_params_and_deps_held_still(make_project, monkeypatch):
    root = make_project()
    paths, cache = ArtifactPaths(root), DvcStageCache(root)
    lock = root / "dvc.lock"

    # params.yaml changes while the stage runs: dvc.lock is not written, and the stage stays stale.
    monkeypatch.setattr(pipeline, "load_stage",
                        fake_stage(paths, lambda: write_overrides(paths.params, ["validate.min_rows=77"])))
    outcome = run_stage("validate", load_config(paths.params), paths, cache)
    assert outcome.status == "unrecorded"
    assert "params.yaml validate.min_rows is 77, but the stage ran with 50" in outcome.note
    assert not lock.exists() and not cache.is_up_to_date("validate")

    # A dependency changes while it runs: the record is undone, naming the file.
    code = root / "tasks" / "contracts" / "text.py"
    monkeypatch.setattr(pipeline, "load_stage",
                        fake_stage(paths, lambda: code.write_text(code.read_text() + "# edited mid-run\n")))
    outcome = run_stage("validate", load_config(paths.params), paths, cache)
    assert outcome.status == "unrecorded" and "tasks/contracts/text.py changed while the stage ran" in outcome.note
    assert not lock.exists() and not cache.is_up_to_date("validate")
    assert not paths.lock_cpu.exists(), "nor is the CPU beside dvc.lock"

    # Nothing changes: recorded, DVC agrees it is up to date, and the stage's old failure report goes.
    (paths.failed_dir("validate") / "report.md").parent.mkdir(parents=True)
    (paths.failed_dir("validate") / "report.md").write_text("FAILED")
    monkeypatch.setattr(pipeline, "load_stage", fake_stage(paths))
    outcome = run_stage("validate", load_config(paths.params), paths, cache)
    assert (outcome.status, outcome.note) == ("completed", "")
    assert "validate" in lock.read_text() and cache.is_up_to_date("validate")
    assert list(lock_cpus_on_disk(paths)) == ["validate"]
    assert not (root / "artifacts" / "_failed").exists()


def test_tunegate_stage_removes_the_stage_failure_report_when_it_succeeds(tmp_path, tiny_model_dir, monkeypatch):
    from ruamel.yaml import YAML

    YAML().dump(tiny_params(tiny_model_dir), tmp_path / "params.yaml")
    paths = ArtifactPaths(tmp_path)
    paths.failed_dir("prepare").mkdir(parents=True)
    paths.failed_dir("validate").mkdir(parents=True)
    monkeypatch.setattr("tasks.core.stage.load_stage", lambda name: SimpleNamespace(fn=fake_stage(paths)(name)))
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "validate"]) == 0
    assert not paths.failed_dir("validate").exists()
    assert paths.failed_dir("prepare").is_dir(), "another stage's failure report stays"


def test_a_busy_workspace_refuses_a_second_process_naming_the_holder(tmp_path):
    holder = hold(HOLD_WORKSPACE, tmp_path)
    try:
        done = run([str(BIN / "tunegate"), "stage", "validate"], tmp_path, check=False)
        assert done.returncode == 1
        assert "workspace is busy" in done.stderr and f"`tunegate run` (pid {holder.pid}" in done.stderr
        assert "Traceback" not in done.stderr
        with pytest.raises(WorkspaceBusy):
            with workspace_lock(ArtifactPaths(tmp_path), "this test"):
                pass
    finally:
        release(holder)
    with workspace_lock(ArtifactPaths(tmp_path), "this test"):  # free again once its holder is gone
        pass


@pytest.mark.e2e  # runs the flow (and waits out DVC's lock retries)
def test_flow_refuses_to_start_on_unversioned_data_or_a_busy_dvc_repo(make_project):
    root = make_project()
    params = (root / "params.yaml").read_text()
    data = root / "data" / "movie_reviews.csv"
    original = data.read_text()
    data.write_text(original + '"one more review, never dvc added",1,rotten_tomatoes\n')
    with pytest.raises(UntrackedDataChange, match=r"modified: data/movie_reviews\.csv.*Run `dvc add data`"):
        training_pipeline.fn(overrides=["train.epochs=3"], project=str(root))
    assert not (root / "artifacts").exists() and not (root / "dvc.lock").exists()

    data.write_text(original)
    holder = hold(HOLD_DVC_LOCK, root)
    try:
        with pytest.raises(DvcBusy, match=r"dvc repro"):
            training_pipeline.fn(overrides=["train.epochs=3"], project=str(root))
        # Once a run is under way, a DVC call waits for a short DVC command instead (here: 5 s).
        threading.Timer(5, release, [holder]).start()
        assert DvcStageCache(root).is_up_to_date("validate") is False
    finally:
        release(holder)
    assert (root / "params.yaml").read_text() == params, "a refused run writes no override"
    assert not (root / "artifacts").exists()


# --- two real runs at once, and Ctrl-C (whole-pipeline processes) -------------------------------------------

def slow_training_project(make_project, tiny_model_dir) -> Path:
    """A project whose train stage runs for minutes and checkpoints every few steps."""
    params = tiny_params(tiny_model_dir)
    params["train"].update(epochs=200, early_stopping_patience=200, checkpoint_every_steps=2)
    return make_project(params=params)


def start(cmd: list[str], root: Path, prefect_home: Path) -> subprocess.Popen:
    """Start a command in its own session (as a terminal would: Ctrl-C goes to its whole process group)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_HOME": str(prefect_home)}
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)


def default_sigint() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a test runner started as a background job (`cmd &` in a
    script) ignores SIGINT, and an ignored SIGINT is inherited, so the run would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_training(root: Path, process: subprocess.Popen, limit_s: float = 600) -> None:
    checkpoints = root / ".tunegate" / "checkpoints" / "train"
    deadline = time.monotonic() + limit_s
    # A complete checkpoint (step-*.pt), not the temp file of one being written: Ctrl-C then removes that.
    while not any(checkpoints.rglob("step-*.pt")):
        if process.poll() is not None:
            raise AssertionError(f"ended before training ({process.returncode}):\n{process.communicate()}")
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)


def processes_using(prefect_home: Path) -> list[str]:
    """Command lines of live processes whose environment points at this PREFECT_HOME."""
    marker = f"PREFECT_HOME={prefect_home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def interrupt(process: subprocess.Popen, limit_s: float = 60) -> tuple[int, str, str]:
    """Ctrl-C: SIGINT to the process group; returns (exit code, stdout, stderr)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        out, err = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"still running {limit_s} s after Ctrl-C")
    return process.returncode, out, err


@pytest.mark.e2e
def test_ctrl_c_ends_a_run_in_seconds_keeping_outputs_checkpoints_and_no_server(make_project, tiny_model_dir,
                                                                                tmp_path):
    root = slow_training_project(make_project, tiny_model_dir)
    prefect_home = tmp_path / "prefect-home"
    flow = start([str(BIN / "tunegate"), "run"], root, prefect_home)
    wait_for_training(root, flow)
    before = {stage: file_sha256(root / "artifacts" / stage) for stage in ("validate", "prepare")}
    code, out, err = interrupt(flow)
    assert code == 130, err
    assert "tunegate run interrupted" in err and "Traceback" not in out + err
    assert {stage: file_sha256(root / "artifacts" / stage) for stage in before} == before
    assert not (root / "artifacts" / "train" / "model").exists()
    assert any((root / ".tunegate" / "checkpoints" / "train").rglob("*.pt")), "checkpoints stay for a resume"
    assert processes_using(prefect_home) == [], "the temporary Prefect server must stop with the run"


@pytest.mark.e2e
def test_a_second_run_or_dvc_repro_during_a_run_exits_1_and_changes_nothing(make_project, tiny_model_dir,
                                                                             tmp_path):
    root = slow_training_project(make_project, tiny_model_dir)
    flow = start([str(BIN / "tunegate"), "run"], root, tmp_path / "prefect-home")
    try:
        wait_for_training(root, flow)
        lock_before = (root / "dvc.lock").read_bytes()
        second = run([str(BIN / "tunegate"), "run"], root, check=False)
        assert second.returncode == 1
        assert f"workspace is busy: `tunegate run` (pid {flow.pid}" in second.stderr
        repro = run([str(BIN / "dvc"), "repro"], root, check=False)
        assert repro.returncode != 0 and "workspace is busy" in repro.stdout + repro.stderr
        assert (root / "dvc.lock").read_bytes() == lock_before
    finally:
        interrupt(flow)


@pytest.mark.e2e
def test_tunegate_run_during_dvc_repro_exits_1_naming_the_repro(make_project, tiny_model_dir, tmp_path):
    root = slow_training_project(make_project, tiny_model_dir)
    repro = start([str(BIN / "dvc"), "repro"], root, tmp_path / "prefect-home")
    try:
        wait_for_training(root, repro)
        done = run([str(BIN / "tunegate"), "run"], root, check=False)
        assert done.returncode == 1
        assert "workspace is busy: `tunegate stage train (dvc repro)`" in done.stderr
    finally:
        interrupt(repro)
