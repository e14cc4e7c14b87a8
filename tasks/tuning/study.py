"""`tunegate tune`: an Optuna study whose trials are DVC experiments.

Each trial is `dvc exp run --temp -n <study>-<number> -S key=value ... <stage>`: DVC runs the pipeline up to the
stage the searched keys belong to (train, or distill) in a temporary copy of the workspace and keeps the result as a
named experiment, so `dvc exp show` compares the trials and `dvc exp apply` brings one back. The trial's value is
that stage's dev accuracy, read from the experiment's own result.json: the search never reads test. While a train
trial runs, its dev accuracy after each epoch comes back through $TUNEGATE_EPOCH_LOG, and the pruner may stop it.

Trials run in threads (Optuna's n_jobs), each waiting on its DVC process; workers on other hosts share the study
through its storage (a journal file or a database URL), as Optuna scales out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from tasks.core import vcs
from tasks.core.config import PipelineConfig, SearchRange, TuneConfig, lookup, override
from tasks.core.errors import TunegateError
from tasks.core.paths import ArtifactPaths
from tasks.training.tracking import EPOCH_LOG_ENV
from tasks.judging.selection import COMPLETE, FAILED, PRUNED, RUNNING, TrialRow, recipe_text, summarize

# The dev figure each target stage writes to its result.json (tracked by DVC in the experiment).
TARGET_VALUE: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("artifacts/train/result.json", ("best_dev_accuracy",)),
    "distill": ("artifacts/distill/result.json", ("dev", "student_accuracy")),
}
POLL_S = 1.0
STOP_GRACE_S = 60.0  # a stopped trial's DVC process cleans its temporary workspace up after SIGINT
DEFAULT_ATTR = "params.yaml recipe"


class TuneError(TunegateError):
    """The search cannot start or cannot go on (no git commit, a study's space changed, a DVC failure)."""


class TrialFailed(TunegateError):
    """A trial's DVC experiment failed; its log says why."""


class TrialCut(TunegateError):
    """A trial still running when the time budget ended was stopped."""


def target_stage(space: dict[str, SearchRange]) -> str:
    """The last stage a trial runs: distill when any distill key is searched (its dev figure judges the trial)."""
    return "distill" if any(key.startswith("distill.") for key in space) else "train"


def journal_path(tune: TuneConfig, paths: ArtifactPaths) -> Path | None:
    """The study's journal file; None when tune.storage is a database URL."""
    if tune.storage and "://" in tune.storage:
        return None
    return paths.tune_journal(tune.study) if tune.storage is None else paths.root / tune.storage


def open_storage(tune: TuneConfig, paths: ArtifactPaths) -> tuple[Any, str]:
    """The study's Optuna storage and how to name it in records (a database URL without its password)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = journal_path(tune, paths)
    if journal is None:
        from urllib.parse import urlsplit

        parts = urlsplit(tune.storage)
        shown = tune.storage.replace(f":{parts.password}@", ":***@") if parts.password else tune.storage
        return tune.storage, shown
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return storage, os.path.relpath(journal, paths.root)


def suggest(trial: Any, key: str, search: SearchRange) -> Any:
    """The trial's value for one key, from its range or choices."""
    if search.choices is not None:
        return trial.suggest_categorical(key, search.choices)
    if search.integer:
        return trial.suggest_int(key, int(search.low), int(search.high), step=int(search.step or 1), log=search.log)
    return trial.suggest_float(key, float(search.low), float(search.high), step=search.step, log=search.log)


def current_recipe(cfg: PipelineConfig) -> dict[str, Any] | None:
    """params.yaml's values of the searched keys, when every one lies in its range (then trial 0 runs it, and the
    search is measured against it); None when one lies outside."""
    dumped, recipe = cfg.dump(), {}
    for key, search in cfg.tune.space.items():
        value = lookup(dumped, key)
        inside = (value in search.choices) if search.choices is not None else (
            not isinstance(value, bool) and isinstance(value, (int, float)) and search.low <= value <= search.high)
        if not inside:
            return None
        recipe[key] = value
    return recipe


def experiment_value(root: Path, name: str, target: str) -> float:
    """The target stage's dev accuracy as the experiment `name` recorded it (its result.json, in DVC's cache)."""
    refs = vcs.git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    revs = [line.split()[0] for line in refs.splitlines() if line.endswith(f"/{name}")]
    if not revs:
        raise TrialFailed(f"DVC kept no experiment named {name}")
    path, keys = TARGET_VALUE[target]
    import dvc.api

    value: Any = json.loads(dvc.api.read(path, repo=str(root), rev=revs[-1]))
    for key in keys:
        value = value[key]
    return float(value)


def stop(process: subprocess.Popen) -> None:
    """Stop a trial's DVC process group as Ctrl-C would (DVC then removes its temporary workspace); harder if it
    does not end in STOP_GRACE_S."""
    for sig, wait in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def epoch_rows(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class TrialRunner:
    """Runs one trial as a DVC experiment and reports its dev curve to Optuna as it comes."""

    root: Path
    study: str
    target: str
    deadline: float | None
    say: Callable[[str], None]
    poll_s: ClassVar[float] = POLL_S  # how often the trial's dev curve, its process and the deadline are looked at

    def folder(self) -> Path:
        folder = ArtifactPaths(self.root).work_dir / "tune" / self.study
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def __call__(self, trial: Any, params: dict[str, Any]) -> float:
        import optuna

        name = f"{self.study}-{trial.number}"
        trial.set_user_attr("experiment", name)
        folder = self.folder()
        log, out = folder / f"{name}.epochs.jsonl", folder / f"{name}.log"
        log.unlink(missing_ok=True)
        started = time.monotonic()
        with out.open("w", encoding="utf-8") as handle:
            process = self.start(name, params, {**os.environ, EPOCH_LOG_ENV: str(log)}, handle)
        reported = 0
        try:
            while process.poll() is None:
                time.sleep(self.poll_s)
                rows = epoch_rows(log)
                for row in rows[reported:]:
                    reported += 1
                    trial.report(float(row["dev_accuracy"]), int(row["epoch"]))
                    trial.set_user_attr("epochs", [r["dev_accuracy"] for r in rows[:reported]])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"dev accuracy {row['dev_accuracy']:.4f} after epoch "
                                                 f"{row['epoch']} is below the pruning percentile")
                if self.deadline is not None and time.time() > self.deadline:
                    trial.set_user_attr("note", "stopped by tune.timeout_minutes")
                    raise TrialCut(f"trial {trial.number} was still running when the time budget ended")
        except BaseException:  # pruned, cut, Ctrl-C, or an error in this thread: leave no trial running
            if process.poll() is None:
                stop(process)
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("epochs", [row["dev_accuracy"] for row in epoch_rows(log)])
        if process.returncode != 0:
            tail = out.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            trial.set_user_attr("note", f"dvc exp run exited {process.returncode}")
            raise TrialFailed(f"trial {trial.number} ({name}) failed; {os.path.relpath(out, self.root)} ends:\n"
                              + "\n".join(tail))
        return self.value(name)

    def start(self, name: str, params: dict[str, Any], env: dict[str, str], output: IO[str]) -> subprocess.Popen:
        """The trial: a DVC experiment in a temporary workspace, with the trial's values as -S overrides."""
        args = ["exp", "run", "--temp", "-n", name,
                *(arg for key, value in params.items() for arg in ("-S", override(key, value))), self.target]
        return vcs.dvc_process(self.root, args, env, output)

    def value(self, name: str) -> float:
        return experiment_value(self.root, name, self.target)


def trial_rows(study: Any) -> list[TrialRow]:
    """Every trial of the study as the record and the table show it."""
    import optuna

    states = {optuna.trial.TrialState.COMPLETE: COMPLETE, optuna.trial.TrialState.PRUNED: PRUNED,
              optuna.trial.TrialState.FAIL: FAILED}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        rows.append(TrialRow(number=trial.number, state=states.get(trial.state, RUNNING), value=value,
                             params=dict(trial.params), experiment=attrs.get("experiment"),
                             seconds=attrs.get("seconds"), epochs=list(attrs.get("epochs", [])),
                             note=attrs.get("note", "")))
    return rows


def open_study(cfg: PipelineConfig, paths: ArtifactPaths, *, create: bool) -> tuple[Any, str]:
    """The study (created when `create`), and its storage's name."""
    import optuna

    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # JournalStorage and constant_liar are marked experimental; they are what sharing and parallel trials need.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    tune = cfg.tune
    journal = journal_path(tune, paths)
    if not create and journal is not None and not journal.is_file():  # opening the journal would create it
        raise TuneError(f"no study named {tune.study!r}: {os.path.relpath(journal, paths.root)} does not exist; run "
                        "`tunegate tune` first")
    storage, shown = open_storage(tune, paths)
    if not create:
        try:
            return optuna.load_study(study_name=tune.study, storage=storage), shown
        except KeyError as exc:
            raise TuneError(f"no study named {tune.study!r} in {shown}: run `tunegate tune` first") from exc
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=tune.random_trials,
                                         constant_liar=tune.workers > 1)  # parallel trials: spread them out
    # Optuna's percentile is the share kept (25: the top quarter stays); tune.pruning.percentile is the share stopped.
    pruner = optuna.pruners.PercentilePruner(100.0 - tune.pruning.percentile,
                                             n_startup_trials=tune.pruning.startup_trials,
                                             n_warmup_steps=tune.pruning.warmup_epochs)
    study = optuna.create_study(study_name=tune.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    space = {key: search.model_dump(mode="json", exclude_defaults=True) for key, search in tune.space.items()}
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
        study.set_user_attr("target", target_stage(tune.space))
        study.set_user_attr("baseline", vcs.git_output(paths.root, "rev-parse", "HEAD") or "")
    elif recorded != space:
        raise TuneError(f"study {tune.study!r} in {shown} searched another space ({sorted(recorded)}); its trials "
                        f"would not compare: name a new tune.study or restore the space")
    return study, shown


@contextmanager
def trials_stoppable() -> Iterator[None]:
    """SIGINT handled in this process while trials run. A process started in the background by a shell (nohup, `&`,
    a CI runner) inherits SIGINT *ignored*, and would pass that on to every trial it starts (an ignored signal stays
    ignored across exec; a handled one becomes the default): its trials could then be stopped only by SIGTERM, which
    gives DVC no chance to remove its temporary workspace."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_search(cfg: PipelineConfig, paths: ArtifactPaths, say: Callable[[str], None],
               runner_type: type[TrialRunner] = TrialRunner) -> dict[str, Any]:
    """Run the study within tune.trials (counted over the whole study, every worker's) and tune.timeout_minutes;
    returns its record (tasks/judging/selection.py), best trial by dev accuracy. `runner_type` runs each trial."""
    import optuna

    tune = cfg.tune
    if vcs.git_output(paths.root, "rev-parse", "HEAD") is None:
        raise TuneError(f"{paths.root} has no git commit: DVC experiments start from one (commit params.yaml, "
                        "dvc.yaml and the data's .dvc file first)")
    study, shown = open_study(cfg, paths, create=True)
    if not study.trials:
        recipe = current_recipe(cfg)
        if recipe is not None:  # trial 0: what the search has to beat
            study.enqueue_trial(recipe, user_attrs={"recipe": DEFAULT_ATTR})
        else:
            say("tune: params.yaml's recipe lies outside tune.space, so no trial runs it as the baseline")
    deadline = time.time() + tune.timeout_minutes * 60 if tune.timeout_minutes else None
    runner = runner_type(paths.root, tune.study, study.user_attrs["target"], deadline, say)
    lock = threading.Lock()

    def objective(trial: Any) -> float:
        params = {key: suggest(trial, key, search) for key, search in tune.space.items()}
        with lock:
            say(f"tune: trial {trial.number} ({tune.study}-{trial.number}) started: {recipe_text(params)}")
        return runner(trial, params)

    def finished(study: Any, trial: Any) -> None:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        with lock:
            try:
                best = f"; best so far trial {study.best_trial.number} ({study.best_value:.4f})"
            except ValueError:
                best = ""
            say(f"tune: trial {trial.number} {trial.state.name.lower()}: dev accuracy {value} "
                f"({trial.user_attrs.get('seconds', '?')} s){best}")

    done = sum(t.state.is_finished() for t in study.trials)
    left = None if tune.trials is None else max(0, tune.trials - done)
    if left == 0:
        say(f"tune: study {tune.study!r} already holds {done} finished trials (tune.trials {tune.trials})")
    else:
        callbacks = [finished]
        if tune.trials is not None:
            callbacks.append(optuna.study.MaxTrialsCallback(tune.trials))
        with trials_stoppable():
            study.optimize(objective, n_trials=left, timeout=None if deadline is None else deadline - time.time(),
                           n_jobs=tune.workers, catch=(TrialFailed, TrialCut), callbacks=callbacks,
                           gc_after_trial=False)
    return study_record(study, shown)


def study_record(study: Any, shown: str) -> dict[str, Any]:
    """The study's record as tuning.json holds it (tasks/judging/selection.py), `shown` naming its storage."""
    trials = study.get_trials(deepcopy=False)
    default = next((t.number for t in trials if t.user_attrs.get("recipe") == DEFAULT_ATTR), None)
    return summarize(trial_rows(study), study=study.study_name, storage=shown, target=study.user_attrs["target"],
                     space=study.user_attrs["space"], default_number=default)
