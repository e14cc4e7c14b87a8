"""Experiment tracking while training runs: dvclive curves appended step by step, progress in the Prefect UI.

Rows are plain dicts (what TrainState records): a step row {step, loss, lr}, an epoch row
{epoch, step, train_loss, dev_accuracy, dev_macro_f1}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import chdir
from pathlib import Path
from typing import Any

# (dvclive metric, row field): per optimizer step, and at each epoch's last step.
STEP_METRICS = (("train/loss", "loss"), ("train/lr", "lr"))
EPOCH_METRICS = (("train/epoch_loss", "train_loss"), ("dev/accuracy", "dev_accuracy"),
                 ("dev/macro_f1", "dev_macro_f1"))
PROGRESS_KEY, EPOCHS_KEY = "train-progress", "train-epochs"  # Prefect artifact keys (lowercase, dashes)


def curves_summary(last_step: dict[str, float] | None, last_epoch: dict[str, Any] | None,
                   best_dev_accuracy: float, best_epoch: int) -> dict[str, Any]:
    """metrics.json without `step`: the latest value of every curve, best epoch so far; one fixed key order."""
    summary: dict[str, Any] = {}
    for row, metrics in ((last_step, STEP_METRICS), (last_epoch, EPOCH_METRICS)):
        for name, field in metrics if row else ():
            group, metric = name.split("/")
            summary.setdefault(group, {})[metric] = float(row[field])
    return {**summary, "best_dev_accuracy": best_dev_accuracy, "best_epoch": best_epoch}


class LiveCurves:
    """dvclive files of one run in `folder`: a row per optimizer step and per epoch, appended as they happen.

    dvclive appends each row to its TSV file at once (readable while the run goes on); metrics.json is
    rewritten at each epoch end and at finish(). No timestamps: identical runs give identical bytes.
    """

    def __init__(self, folder: Path, steps: list[dict[str, float]], history: list[dict[str, Any]]):
        """Start the curves afresh, replaying what a resumed run did before (its checkpoint's steps and history)."""
        from dvclive import Live

        folder.mkdir(parents=True, exist_ok=True)
        # dvclive looks for a DVC repo from the working directory: make that the project, not the caller's
        # cwd (only while it starts: chdir is process-wide). dvcyaml=None: dvc.yaml declares the plots itself;
        # no experiment saved from here. resume=False: the folder is emptied, then refilled from the rows.
        with chdir(folder):
            self._live = Live(str(folder.resolve()), save_dvc_exp=False, dvcyaml=None)
        self._last_step: dict[str, float] | None = None
        self._last_epoch: dict[str, Any] | None = None
        self._best: tuple[float, int] = (-1.0, 0)
        for row in steps:
            self.log_step(row)
        for row in history:
            self.log_epoch(row)

    def _log(self, row: dict[str, Any], metrics: tuple[tuple[str, str], ...]) -> None:
        self._live.step = int(row["step"])
        for name, field in metrics:
            self._live.log_metric(name, float(row[field]), timestamp=False)

    def log_step(self, row: dict[str, float]) -> None:
        """Append one optimizer step's loss and learning rate."""
        self._log(row, STEP_METRICS)
        self._last_step = row

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's train loss and dev metrics (at its last step) and rewrite metrics.json."""
        self._log(row, EPOCH_METRICS)
        self._last_epoch = row
        if row["dev_accuracy"] > self._best[0]:
            self._best = (float(row["dev_accuracy"]), int(row["epoch"]))
        self._write_summary(*self._best)

    def finish(self, best_dev_accuracy: float, best_epoch: int) -> None:
        """Write the final metrics.json (the best epoch the run kept)."""
        self._write_summary(best_dev_accuracy, best_epoch)

    def _write_summary(self, best_dev_accuracy: float, best_epoch: int) -> None:
        last = [int(r["step"]) for r in (self._last_step, self._last_epoch) if r]
        if last:
            self._live.step = max(last)  # make_summary adds it as "step"
        self._live.summary = curves_summary(self._last_step, self._last_epoch, best_dev_accuracy, best_epoch)
        self._live.make_summary()


# `tunegate tune` follows a trial's dev curve through the file this names (a JSON line per epoch) to stop a poor
# trial early: the trial runs in DVC's temporary workspace (`dvc exp run --temp`), which the search cannot see into.
EPOCH_LOG_ENV = "TUNEGATE_EPOCH_LOG"


def append_epoch_log(row: dict[str, Any]) -> None:
    """Append an epoch's row to the file $TUNEGATE_EPOCH_LOG names, if it names one."""
    target = os.environ.get(EPOCH_LOG_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({key: row[key] for key in ("epoch", "step", "dev_accuracy")}) + "\n")


def copy_curves(live: Path, dest: Path) -> None:
    """Copy a finished run's curves into the stage's staged output folder (swapped in whole later)."""
    shutil.copytree(live, dest)


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (then the API is there to publish to)."""
    if "prefect" not in sys.modules:  # never imported in this process (`tunegate stage`): no run; skip the import
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class PrefectProgress:
    """The run's progress as Prefect artifacts: a progress bar (whole percents) and a table of epochs.

    Does nothing outside a Prefect run (`tunegate stage train`, `dvc repro`, tests calling fit()).
    """

    def __init__(self, total_steps: int, done_steps: int, enabled: bool = True):
        self._total, self._percent, self._id = max(total_steps, 1), -1, None
        if enabled and in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self._percent = self._to_percent(done_steps)
            self._id = create_progress_artifact(float(self._percent), key=PROGRESS_KEY,
                                                description=f"training: optimizer steps done of {total_steps}")

    def _to_percent(self, steps: int) -> int:
        return min(100, 100 * steps // self._total)

    def step(self, global_step: int) -> None:
        """Move the bar; one API call per whole percent, not per step."""
        percent = self._to_percent(global_step)
        if self._id is not None and percent != self._percent:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._id, float(percent))
            self._percent = percent

    def finish(self) -> None:
        """Fill the bar: an early-stopped run is done too."""
        self._percent = -1
        self.step(self._total)

    def epoch(self, history: list[dict[str, Any]]) -> None:
        """Publish the epochs so far (train loss, dev metrics) as a table."""
        if self._id is not None:
            from prefect.artifacts import create_table_artifact

            create_table_artifact([dict(row) for row in history], key=EPOCHS_KEY,
                                  description="training: train loss and dev metrics per epoch")


def live_dir_note(folder: Path, root: Path) -> str:
    """The command that draws the curves of the run in progress, for the log."""
    rel = Path(os.path.relpath(folder, root)) / "plots" / "metrics"
    return f"dvc plots show -x step {rel / 'train' / 'loss.tsv'} {rel / 'dev' / 'accuracy.tsv'}"
