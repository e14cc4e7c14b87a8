"""Training batches: a seeded per-epoch plan of length-grouped micro-batches, padded per batch, loaded in steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from tasks.core.batching import shuffled_length_batches
from tasks.core.config import TrainConfig

if TYPE_CHECKING:
    from tasks.training.tokens import TokenizedTexts


def epoch_steps(lengths: np.ndarray, cfg: TrainConfig, seed: int, epoch: int, world: int,
                rank: int) -> list[list[np.ndarray]]:
    """This process's micro-batches for each optimizer step of `epoch`: a pure function of (seed, epoch).

    So the sampler position is just (epoch, step): a resumed run sees the very same batches. The rows of a
    step depend on the effective batch (batch_size x gradient_accumulation_steps) alone, cut into micro-batches
    of batch_size: the out-of-memory fallback (half the batch, twice the accumulation) trains on the same rows
    at every step.
    """
    step_rows = cfg.batch_size * cfg.gradient_accumulation_steps
    steps = shuffled_length_batches(lengths, step_rows, np.random.default_rng([seed, epoch]))
    # DDP needs every process to take the same number of steps: drop the few steps that do not divide.
    steps = steps[:len(steps) - len(steps) % world]
    size = cfg.batch_size
    return [[rows[i:i + size] for i in range(0, len(rows), size)] for rows in steps[rank::world]]


class StepBatches(torch.utils.data.Dataset):
    """Item i: the padded (inputs, labels) micro-batches of optimizer step i."""

    def __init__(self, tokens: TokenizedTexts, labels: torch.Tensor, steps: list[list[np.ndarray]]):
        self.tokens, self.labels, self.steps = tokens, labels, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        return [(self.tokens.batch(idx), self.labels[idx]) for idx in self.steps[i]]


def step_loader(dataset: StepBatches, cfg: TrainConfig, device: torch.device) -> torch.utils.data.DataLoader:
    """Batches built in the background on CUDA (workers, pinned memory); inline on CPU, where cores compute."""
    workers = cfg.dataloader_workers if cfg.dataloader_workers is not None else (2 if device.type == "cuda" else 0)
    # Its own generator: an iterator draws a seed from it, which from the global RNG would shift dropout
    # masks between an uninterrupted run and a resumed one (the resumed one starts an extra iterator).
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
