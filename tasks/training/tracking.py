"""Experiment tracking: the training run's curves as dvclive files (DVC metrics and plots)."""

from __future__ import annotations

from contextlib import chdir
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.train import TrainOutcome


def write_live(folder: Path, outcome: TrainOutcome) -> None:
    """dvclive files: train/loss and train/lr per optimizer step, dev metrics at each epoch's last step."""
    from dvclive import Live

    # dvcyaml=None: dvc.yaml declares these metrics and plots itself; no experiment saved from here.
    # dvclive looks for a DVC repo from the working directory: make that the project, not the caller's cwd.
    folder.mkdir(parents=True, exist_ok=True)
    with chdir(folder), Live(str(folder), save_dvc_exp=False, dvcyaml=None) as live:
        for row in outcome.steps:
            live.step = int(row["step"])
            live.log_metric("train/loss", row["loss"])
            live.log_metric("train/lr", row["lr"])
        for row in outcome.history:
            live.step = int(row["step"])
            live.log_metric("train/epoch_loss", row["train_loss"])
            live.log_metric("dev/accuracy", row["dev_accuracy"])
            live.log_metric("dev/macro_f1", row["dev_macro_f1"])
        live.summary["best_dev_accuracy"] = outcome.best_dev_accuracy
        live.summary["best_epoch"] = outcome.best_epoch
