"""Out-of-memory fallback for training: the same effective batch, cut into smaller per-device micro-batches.

On a CUDA out-of-memory error the train stage trains again with batch_size divided by its smallest prime
factor (halved when even) and gradient_accumulation_steps multiplied by it, down to batch 1: the same rows in
every optimizer step (tasks/training/loader.epoch_steps), each weighted by its share of the step. What still
differs: dropout masks, drawn per micro-batch, and float summation order; so the model is trained the same way
but its weights are close, not byte-identical, to a run that fit in memory.
The smaller values live only in memory: params.yaml keeps the requested ones (dvc.lock records those, so a
rerun is not triggered by the fallback), and the train stamp and run record say what was actually used.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from tasks.core.config import PipelineConfig, TrainConfig
from tasks.core.errors import TunegateError

T = TypeVar("T")


class OutOfMemoryAtBatchOne(TunegateError):
    """Training ran out of device memory even with one row per micro-batch."""

    def __init__(self, cfg: TrainConfig, error: BaseException):
        self.error = error
        super().__init__(f"train ran out of device memory at train.batch_size 1 (gradient accumulation "
                         f"{cfg.gradient_accumulation_steps}, max_length {cfg.max_length}): lower "
                         f"train.max_length, use train.method lora, or train on a larger device. ({error})")


@dataclass
class MemoryFit(Generic[T]):
    """What the training attempt returned, the config it used and the fallbacks taken on the way."""

    result: T
    cfg: PipelineConfig
    fallbacks: list[dict[str, int]] = field(default_factory=list)  # per fallback: from and to batch/accumulation
    errors: list[str] = field(default_factory=list)                # their first lines (device figures: untracked)


def smallest_factor(n: int) -> int:
    """The smallest prime factor of n >= 2."""
    return next(k for k in range(2, n + 1) if n % k == 0)


def smaller_batch(cfg: TrainConfig, error: BaseException) -> TrainConfig:
    """cfg with per-device batch / p and accumulation x p (p: batch_size's smallest prime factor; 2 when even):
    the same effective batch. Raises OutOfMemoryAtBatchOne when the batch is already 1."""
    if cfg.batch_size == 1:
        raise OutOfMemoryAtBatchOne(cfg, error) from error
    factor = smallest_factor(cfg.batch_size)
    return cfg.model_copy(update={"batch_size": cfg.batch_size // factor,
                                  "gradient_accumulation_steps": cfg.gradient_accumulation_steps * factor})


def release_device_memory() -> None:
    """Free what a failed attempt left (its model, optimizer and activations) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fit_within_memory(attempt: Callable[[PipelineConfig], T], cfg: PipelineConfig, *, can_retry: bool,
                      release: Callable[[], None], say: Callable[[str], None]) -> MemoryFit[T]:
    """attempt(cfg), retried on torch.OutOfMemoryError with smaller micro-batches (smaller_batch) until it fits.

    can_retry=False (several processes under a launcher: one retrying alone would hang the others in their
    gradient all-reduce) raises the error as it is. `release` frees the failed attempt's objects.
    """
    fitted: MemoryFit[T] = MemoryFit(result=None, cfg=cfg)  # type: ignore[arg-type]
    while True:
        try:
            fitted.result = attempt(fitted.cfg)
            return fitted
        except torch.OutOfMemoryError as exc:
            if not can_retry:
                raise
            before = fitted.cfg.train
            after = smaller_batch(before, exc)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # Out of the except block: the traceback (and the failed attempt's tensors it references) is gone.
        release()
        fitted.fallbacks.append({"from_batch_size": before.batch_size,
                                 "from_gradient_accumulation_steps": before.gradient_accumulation_steps,
                                 "batch_size": after.batch_size,
                                 "gradient_accumulation_steps": after.gradient_accumulation_steps})
        fitted.errors.append(first_line)
        say(f"train: out of device memory at batch {before.batch_size} x accumulation "
            f"{before.gradient_accumulation_steps}; training again at batch {after.batch_size} x accumulation "
            f"{after.gradient_accumulation_steps} (same effective batch {after.batch_size * after.gradient_accumulation_steps})")
        fitted.cfg = fitted.cfg.model_copy(update={"train": after})
