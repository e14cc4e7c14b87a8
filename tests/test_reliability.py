"""Reliability of flow runs: transient failures retried with backoff, stage time limits, the train stage's
out-of-memory fallback, and a crashed run resuming from the failed stage and from train's checkpoint."""

import errno
import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks.train as train_module
from flows.pipeline import PipelineFailed, training_pipeline
from flows.reliability import StageTimeout, call_with_retries, is_transient, retry_delays, stage_deadline
from flows.workspace import WorkspaceBusy
from tasks.contracts.report import DataValidationError
from tasks.core.config import STAGES, ConfigError
from tasks.core.dvc_cache import DvcBusy
from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths
from tasks.registry.promote import PromotionRefused, RegistryBusy
from tasks.training.checkpoint import list_checkpoints
from tasks.training.loader import epoch_steps
from tasks.training.memory import OutOfMemoryAtBatchOne, fit_within_memory, smaller_batch
from tests.conftest import tiny_params
from tests.test_train import tiny_train_cfg


class Crash(Exception):
    """A bug-like failure: the same again on every retry."""


def caused_by(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize("exc", [
    ConnectionResetError("peer reset"), TimeoutError("read timed out"), BlockingIOError(errno.EAGAIN, "busy"),
    OSError(errno.EBUSY, "device or resource busy"), OSError(errno.ESTALE, "stale NFS file handle"),
    sqlite3.OperationalError("database is locked"), DvcBusy(Path("project")),
    WorkspaceBusy(Path("project/.tunegate/run.lock"), {}), RegistryBusy("the registry lock is held"),
    caused_by(RuntimeError("request failed"), ConnectionRefusedError("refused")),
], ids=lambda exc: type(exc).__name__)
def test_is_transient_retries_io_hiccups_and_locks_held_for_now(exc):
    assert is_transient(exc)


def test_is_transient_knows_dvcs_own_lock_error():
    from dvc.lock import LockError

    assert is_transient(LockError("Unable to acquire lock"))


@pytest.mark.parametrize("exc", [
    FileNotFoundError(errno.ENOENT, "no such file"), PermissionError(errno.EACCES, "denied"),
    OSError(errno.ENOSPC, "no space left on device"), MemoryError(), ValueError("bad value"), Crash("bug"),
    ConfigError("invalid params"), DataValidationError({"success": False, "failed": 1, "checks": [], "warnings": 0}), PromotionRefused("gate said REJECT"),
    StageTimeout("train", 1.0, 61.0), sqlite3.OperationalError("no such table: runs"),
    torch.OutOfMemoryError("CUDA out of memory"),  # handled inside train (smaller micro-batches), not by a retry
    caused_by(TunegateError("could not read the data"), ConnectionResetError("reset")),
], ids=lambda exc: type(exc).__name__)
def test_is_transient_never_retries_data_config_gate_timeout_or_bugs(exc):
    assert not is_transient(exc)


def test_retry_delays_double_after_each_retry():
    assert retry_delays(3, 10) == [10, 20, 40]
    assert retry_delays(0, 10) == []


def flaky(failures: list[BaseException], result="done"):
    """A call that raises the given failures in turn, then returns result; counts its calls."""
    def call():
        call.count += 1
        if failures:
            raise failures.pop(0)
        return result
    call.count = 0
    return call


def test_call_with_retries_waits_the_backoff_then_succeeds_and_announces_each_retry():
    warnings, slept = [], []
    call = flaky([ConnectionResetError("reset"), TimeoutError("slow")])
    assert call_with_retries("prepare", call, 3, 10, warnings.append, slept.append) == "done"
    assert call.count == 3 and slept == [10, 20]
    assert warnings == ["prepare: transient failure (ConnectionResetError: reset); retry 1/3 in 10 s",
                        "prepare: transient failure (TimeoutError: slow); retry 2/3 in 20 s"]


def test_call_with_retries_raises_a_permanent_failure_at_once():
    warnings, slept = [], []
    call = flaky([Crash("bug"), ConnectionResetError("reset")])
    with pytest.raises(Crash):
        call_with_retries("train", call, 3, 10, warnings.append, slept.append)
    assert call.count == 1 and warnings == [] and slept == []


def test_call_with_retries_gives_up_after_the_configured_retries():
    slept = []
    call = flaky([ConnectionResetError(str(i)) for i in range(5)])
    with pytest.raises(ConnectionResetError, match="^2$"):
        call_with_retries("gate", call, 2, 1.5, lambda _: None, slept.append)
    assert call.count == 3 and slept == [1.5, 3.0]


def test_stage_deadline_stops_a_stage_past_its_limit_even_through_its_own_except_exception():
    swallowed = []
    started = time.monotonic()
    with pytest.raises(StageTimeout, match=r"orchestration\.stage_timeout_minutes\.evaluate") as caught:
        with stage_deadline("evaluate", 0.2 / 60):
            while time.monotonic() - started < 30:
                try:
                    time.sleep(0.01)
                except Exception as exc:  # noqa: BLE001 - a stage's broad handler must not swallow the limit
                    swallowed.append(exc)
    assert caught.value.stage == "evaluate" and 0.2 <= caught.value.ran_seconds < 10
    assert swallowed == []


@pytest.mark.heavy
def test_stage_deadline_leaves_a_stage_that_finishes_in_time_alone():
    with stage_deadline("gate", 0.3 / 60):
        time.sleep(0.05)
    time.sleep(0.5)  # past the limit: nothing may land in the caller afterwards


@pytest.mark.parametrize("batch, accumulation, expected", [
    (32, 1, (16, 2)), (16, 2, (8, 4)), (6, 1, (3, 2)), (3, 2, (1, 6)), (7, 1, (1, 7)),
])
def test_smaller_batch_keeps_the_effective_batch(tiny_model_dir, batch, accumulation, expected):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=batch, gradient_accumulation_steps=accumulation).train
    smaller = smaller_batch(cfg, torch.OutOfMemoryError("oom"))
    assert (smaller.batch_size, smaller.gradient_accumulation_steps) == expected
    assert smaller.batch_size * smaller.gradient_accumulation_steps == batch * accumulation


def test_smaller_batch_gives_up_at_batch_one_with_advice(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=1, gradient_accumulation_steps=8).train
    with pytest.raises(OutOfMemoryAtBatchOne, match="train.max_length"):
        smaller_batch(cfg, torch.OutOfMemoryError("oom"))


def test_epoch_steps_train_on_the_same_rows_when_the_batch_is_halved_and_accumulation_doubled(tiny_model_dir):
    lengths = np.random.default_rng(0).integers(1, 60, size=203)
    whole = tiny_train_cfg(tiny_model_dir, batch_size=16, gradient_accumulation_steps=1).train
    halved = tiny_train_cfg(tiny_model_dir, batch_size=8, gradient_accumulation_steps=2).train
    for epoch in (1, 2):
        a, b = epoch_steps(lengths, whole, 7, epoch, 1, 0), epoch_steps(lengths, halved, 7, epoch, 1, 0)
        assert len(a) == len(b) == 13
        assert [list(np.concatenate(s)) for s in a] == [list(np.concatenate(s)) for s in b]
        assert all(len(micro) <= 8 for step in b for micro in step)


def test_fit_within_memory_cuts_micro_batches_until_the_attempt_fits(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=16, gradient_accumulation_steps=1)
    tried, said, released = [], [], []

    def attempt(run_cfg):
        tried.append(run_cfg.train.batch_size)
        if run_cfg.train.batch_size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "model"

    fitted = fit_within_memory(attempt, cfg, can_retry=True, release=lambda: released.append(1), say=said.append)
    assert fitted.result == "model" and tried == [16, 8, 4] and len(released) == 2
    assert (fitted.cfg.train.batch_size, fitted.cfg.train.gradient_accumulation_steps) == (4, 4)
    assert fitted.cfg.train.learning_rate == cfg.train.learning_rate and cfg.train.batch_size == 16, "cfg untouched"
    assert fitted.fallbacks[0] == {"from_batch_size": 16, "from_gradient_accumulation_steps": 1, "batch_size": 8,
                                   "gradient_accumulation_steps": 2}
    assert fitted.errors == ["CUDA out of memory. Tried to allocate 2.00 GiB"] * 2
    assert "training again at batch 8 x accumulation 2 (same effective batch 16)" in said[0]
    with pytest.raises(torch.OutOfMemoryError):  # several processes: one retrying alone would hang the others
        fit_within_memory(attempt, cfg, can_retry=False, release=lambda: None, say=said.append)


@pytest.mark.e2e  # trains the tiny model twice over (~35 s on 2 busy cores)
def test_train_stage_out_of_memory_retrains_at_half_batch_and_stamps_what_it_used(tmp_path, staged_pipeline,
                                                                                 monkeypatch):
    cfg, paths = staged_pipeline
    root = tmp_path / "project"
    shutil.copytree(paths.root / "data", root / "data")
    shutil.copytree(paths.stage_dir("prepare"), root / "artifacts" / "prepare")
    project = ArtifactPaths(root)
    real_step, widths = train_module.optimizer_step, []

    def step_within_8_rows(runner, micro_batches, *args):
        widths.append(max(len(targets) for _, targets in micro_batches))
        if widths[-1] > 8:  # a device that holds 8 rows at a time, not 16
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_step(runner, micro_batches, *args)

    monkeypatch.setattr(train_module, "optimizer_step", step_within_8_rows)
    train_module.train.fn(cfg, project)

    assert cfg.train.batch_size == 16 and widths[0] == 16 and max(widths[1:]) == 8, "raised once, then fit"
    stamp = json.loads(project.train_stamp.read_text())
    assert stamp["config"]["train"]["batch_size"] == 16, "the config as params.yaml and dvc.lock have it"
    assert (stamp["per_device_batch_size"], stamp["gradient_accumulation_steps"], stamp["effective_batch_size"]) \
        == (8, 2, 16)
    assert stamp["memory_fallback"] == [{"from_batch_size": 16, "from_gradient_accumulation_steps": 1,
                                         "batch_size": 8, "gradient_accumulation_steps": 2}]
    assert stamp["run_identity"]["train"]["batch_size"] == 8
    record = json.loads(project.run_record("train").read_text())
    assert record["memory_fallback_errors"] == ["CUDA out of memory. Tried to allocate 20.00 MiB"]
    unchanged = json.loads(paths.train_stamp.read_text())
    assert stamp["optimizer_steps"] == unchanged["optimizer_steps"] and unchanged["memory_fallback"] == []
    assert not list((root / ".tunegate" / "checkpoints" / "train").iterdir()), "no checkpoints kept after success"


@pytest.mark.heavy
def test_fit_at_half_batch_and_double_accumulation_trains_the_same_model_without_dropout(tiny_model_dir):
    from tasks.train import build_model, fit
    from tests.test_train import toy_split

    weights = []
    for batch, accumulation in ((16, 1), (8, 2)):
        cfg = tiny_train_cfg(tiny_model_dir, batch_size=batch, gradient_accumulation_steps=accumulation)
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        for module in model.modules():  # dropout masks are drawn per micro-batch: the one thing that differs
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        outcome = fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                      cfg.seed, torch.device("cpu"))
        weights.append((len(outcome.steps), model.state_dict()))
    (steps_a, a), (steps_b, b) = weights
    assert steps_a == steps_b == 3
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, "the same rows per step: only float order differs"


def flow_params(tiny_model_dir, **orchestration) -> dict:
    raw = tiny_params(tiny_model_dir)
    raw["train"]["checkpoint_every_steps"] = 1
    raw["orchestration"].update(retry_delay_seconds=0.0, **orchestration)
    return raw


def test_flow_resumes_a_crashed_run_from_the_failed_stage_and_train_from_its_checkpoint(
        make_project, prefect_api, tiny_model_dir, monkeypatch):
    root = make_project(params=flow_params(tiny_model_dir))
    epoch_ends = []

    def crash(*_):
        epoch_ends.append(1)
        raise Crash("the machine went away before the epoch ended")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "end_epoch", crash)
        with pytest.raises(PipelineFailed) as failed:
            training_pipeline(project=str(root))
    assert [(o.stage, o.status) for o in failed.value.outcomes] == [
        ("validate", "completed"), ("prepare", "completed"), ("train", "failed")]
    assert len(epoch_ends) == 1, "a permanent failure is not retried"
    [checkpoints] = (root / ".tunegate" / "checkpoints" / "train").iterdir()
    assert list_checkpoints(checkpoints), "the crashed train left checkpoints"

    # The rerun: evaluate hits a transient failure once, which is retried and logged.
    import flows.pipeline as pipeline

    real_load, warnings, calls = pipeline.load_stage, [], []

    def load_stage(name):
        stage = real_load(name)
        if name != "evaluate":
            return stage

        def flaky_evaluate(*args):
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionResetError("connection reset by the artifact store")
            return stage(*args)
        return flaky_evaluate

    real_warn = pipeline._warn
    monkeypatch.setattr(pipeline, "load_stage", load_stage)
    monkeypatch.setattr(pipeline, "_warn", lambda message: (warnings.append(message), real_warn(message)))
    outcomes = training_pipeline(project=str(root))
    assert [(o.stage, o.status) for o in outcomes] == [("validate", "skipped"), ("prepare", "skipped"),
                                                        *((s, "completed") for s in STAGES[2:])]
    resumed_from = json.loads((root / ".tunegate" / "runs" / "train.json").read_text())["resumed_from"]
    assert resumed_from.startswith(str(checkpoints)), "train resumed from the crashed run's checkpoint"
    assert len(calls) == 2 and warnings == [
        "evaluate: transient failure (ConnectionResetError: connection reset by the artifact store); retry 1/2 in 0 s"]


def test_flow_stops_a_stage_past_its_time_limit_and_keeps_nothing_half_written(make_project, prefect_api,
                                                                               tiny_model_dir, monkeypatch):
    import tasks.validate as validate_stage

    raw = flow_params(tiny_model_dir)
    raw["orchestration"]["stage_timeout_minutes"]["validate"] = 0.001  # 0.06 s
    root = make_project(params=raw)
    real_validate_table = validate_stage.validate_table

    def slow_validate_table(*args, **kwargs):
        # With Great Expectations already imported by earlier tests, validating the tiny table can end before the
        # watchdog thread gets the GIL: spin in Python bytecode (where its exception lands) well past the limit.
        until = time.monotonic() + 30
        while time.monotonic() < until:
            time.sleep(0.001)
        return real_validate_table(*args, **kwargs)

    monkeypatch.setattr(validate_stage, "validate_table", slow_validate_table)
    with pytest.raises(PipelineFailed) as failed:
        training_pipeline(project=str(root))
    assert isinstance(failed.value.cause, StageTimeout) and failed.value.cause.stage == "validate"
    assert [(o.stage, o.status, o.key_figure) for o in failed.value.outcomes] == [
        ("validate", "failed", "StageTimeout")]
    left = [p.name for p in (root / "artifacts").glob("*validate*")] if (root / "artifacts").exists() else []
    assert left == [], "no output, no staging folder left by the stopped stage"
