"""Resumable training checkpoints: one file per save, written atomically, only the newest K kept."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.io import atomic_file

PATTERN = "step-*.pt"


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
    """The newest checkpoint and its state, or None when there is none."""
    found = list_checkpoints(folder)
    if not found:
        return None
    # Our own file holds RNG states (tuples, numpy arrays), hence weights_only=False.
    return found[-1], torch.load(found[-1], map_location="cpu", weights_only=False)


def remove_checkpoints(folder: Path) -> None:
    """Forget a finished run's checkpoints."""
    shutil.rmtree(folder, ignore_errors=True)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
