"""Resumable training checkpoints: one file per save, written atomically, only the newest K kept.

Checkpoints hold only tensors and plain Python values (RNG states included), so they load with
torch.load(weights_only=True): a checkpoint file cannot run code when it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file

PATTERN = "step-*.pt"


class CheckpointLoadError(TunegateError):
    """A checkpoint holds something other than tensors and plain values (an older tunegate's, or not ours)."""


def run_fingerprint(parts: dict[str, Any]) -> str:
    """Short hash of everything that determines a run; checkpoints resume only into the same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:09d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp files of an interrupted save never match)."""
    return sorted(folder.glob(PATTERN)) if folder.is_dir() else []


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of optimizer step `step` (temp file + fsync + rename), then prune."""
    path = checkpoint_path(folder, step)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
    prune_checkpoints(folder, keep)
    return path


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temp files left by a killed save."""
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".step-*.tmp"):
        stale.unlink(missing_ok=True)


def load_latest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint and its state (tensors and plain values only), or None when there is none."""
    found = list_checkpoints(folder)
    if not found:
        return None
    try:
        return found[-1], torch.load(found[-1], map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointLoadError(
            f"{found[-1]} holds more than tensors and plain values, so it is not loaded (loading it could run "
            f"code): it was written by an older tunegate or by something else. Delete {folder} to train from "
            f"the start.") from exc


def remove_runs(stage_folder: Path) -> list[tuple[Path, int]]:
    """Delete the checkpoint folder of every run under stage_folder; returns each removed folder and its bytes."""
    runs = sorted(p for p in stage_folder.iterdir() if p.is_dir()) if stage_folder.is_dir() else []
    removed = []
    for run in runs:
        size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
        shutil.rmtree(run, ignore_errors=True)
        removed.append((run, size))
    return removed


def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain lists (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": numpy_state["bit_generator"], "key": numpy_state["state"]["key"].tolist(),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> str | None:
    """Put back the RNG states rng_states() took; returns a note when not all of them could be."""
    py, npy = states["python"], states["numpy"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    np.random.set_state({"bit_generator": npy["bit_generator"], "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": np.asarray(npy["key"], dtype=np.uint32), "pos": npy["pos"]}})
    torch.set_rng_state(states["torch"])
    saved = list(states.get("cuda", []))
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(saved[:visible]):  # one state per GPU the checkpoint's host saw
        torch.cuda.set_rng_state(state, index)
    if len(saved) != visible and saved:
        return (f"the checkpoint holds the CUDA RNG states of {len(saved)} GPU(s) and {visible} are visible here: "
                f"restored {min(len(saved), visible)}, so random draws on the others differ from the interrupted run")
    return None
