"""Knowledge distillation: the student learns the teacher's temperature-softened outputs, mixed with the labels.

loss per row = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), the hard term only on rows
with a label (transfer texts have none: UNLABELLED). T^2 keeps the soft term's gradients on the scale of the hard
one's whatever the temperature (Hinton et al., 2015). Teacher logits are computed once, before training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tasks.core.batching import length_sorted_batches, shuffled_length_batches
from tasks.core.config import DistillConfig
from tasks.training.engine import adamw_with_warmup
from tasks.training.modeling import bf16_enabled, deterministic_algorithms
from tasks.training.tokens import TokenizedTexts

UNLABELLED = -1  # the label of a transfer row: soft loss only
LOG_EVERY_STEPS = 50  # without a terminal (dvc repro, CI logs), a progress line every this many optimizer steps


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    """Mean over rows of the distillation loss (module docstring); logits [n, classes] float32, labels [n] int64."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    soft = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1) * temperature ** 2
    labelled = labels != UNLABELLED
    hard = F.cross_entropy(student, labels.clamp(min=0), reduction="none") * labelled
    return (alpha * soft + (1 - alpha) * hard).mean()


def mean_kl(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over rows of KL(softmax(teacher) || softmax(student)) at temperature 1, in nats: how far the student's
    predicted distribution is from the teacher's (0 = the same)."""
    with torch.no_grad():
        log_t = F.log_softmax(torch.from_numpy(teacher).double(), dim=-1)
        log_s = F.log_softmax(torch.from_numpy(student).double(), dim=-1)
        return float((log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()) if len(teacher) else 0.0


def concat_tokens(first: TokenizedTexts, second: TokenizedTexts) -> TokenizedTexts:
    """The rows of `first` then those of `second` (same tokenizer) as one store; owners of `second` follow on."""
    if set(first.flat) != set(second.flat):
        raise ValueError(f"token columns differ: {sorted(first.flat)} vs {sorted(second.flat)}")
    flat = {name: np.concatenate([first.flat[name], second.flat[name]]) for name in first.flat}
    offsets = np.concatenate([first.offsets, second.offsets[1:] + first.offsets[-1]])
    texts = int(first.owners.max()) + 1 if len(first.owners) else 0
    owners = np.concatenate([first.owners, second.owners + texts])
    return TokenizedTexts(flat, offsets, first.pad_token_id, first.pad_left, f"{first.key}+{second.key}", owners)


def token_batches(tokens: TokenizedTexts, rows: np.ndarray, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The model inputs of `rows` in length-sorted batches (CPU tensors)."""
    return [tokens.batch(rows[idx]) for idx in length_sorted_batches(tokens.lengths[rows], batch_size)]


def epoch_batches(tokens: TokenizedTexts, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The row batches of one epoch: similar lengths together, shuffled; a pure function of (seed, epoch)."""
    return shuffled_length_batches(tokens.lengths, batch_size, np.random.default_rng([seed, epoch]))


@dataclass
class DistillOutcome:
    """What the distillation loop did: per-epoch mean loss, optimizer steps, rows seen, seconds in steps."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0


def distill_fit(student: Any, tokens: TokenizedTexts, teacher_logits: np.ndarray, labels: np.ndarray,
                cfg: DistillConfig, seed: int, device: torch.device, *, max_grad_norm: float, deterministic: bool,
                console: Console) -> DistillOutcome:
    """Train `student` in place for cfg.epochs on every row of `tokens` (labels[i] = UNLABELLED for transfer rows)
    against the precomputed teacher logits [n, classes]: AdamW + linear warm-up/decay, shuffled length-grouped
    batches drawn from (seed, epoch), gradient clipping. Seeded: the same inputs give the same weights on CPU."""
    total_steps = len(epoch_batches(tokens, cfg.batch_size, seed, 1)) * cfg.epochs
    if total_steps == 0:
        raise ValueError("no rows to distill on")
    student.to(device)
    if cfg.freeze_embeddings:
        # The word embeddings are most of a small student's weights (22k x 384 of MiniLM's) yet cost nothing to run:
        # updating them dominates an AdamW step. Frozen, they stay the teacher's (1.3x faster steps measured here).
        student.get_input_embeddings().weight.requires_grad_(False)
    optimizer, scheduler = adamw_with_warmup(student, cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio,
                                             total_steps, device)
    soft, hard = torch.from_numpy(teacher_logits).float(), torch.from_numpy(labels).long()
    outcome = DistillOutcome()
    torch.manual_seed(seed)  # dropout masks
    student.train()
    with deterministic_algorithms(deterministic, device), \
            Progress(TextColumn("[bold]distill[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("", total=total_steps)
        for epoch in range(1, cfg.epochs + 1):
            losses = []
            for idx in epoch_batches(tokens, cfg.batch_size, seed, epoch):
                tick = time.perf_counter()
                rows = torch.from_numpy(idx)
                inputs = {k: v.to(device) for k, v in tokens.batch(idx).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
                    logits = student(**inputs).logits
                loss = kd_loss(logits.float(), soft[rows].to(device), hard[rows].to(device), cfg.temperature,
                               cfg.alpha)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.item()))
                outcome.steps += 1
                outcome.samples_seen += len(idx)
                outcome.train_seconds += time.perf_counter() - tick
                status = f"epoch {epoch}/{cfg.epochs} loss {np.mean(losses[-20:]):.4f}"
                progress.update(bar, completed=outcome.steps, description=status)
                if not console.is_terminal and outcome.steps % LOG_EVERY_STEPS == 0:
                    progress.console.print(f"distill: step {outcome.steps}/{total_steps} {status}")
            outcome.epoch_losses.append(float(np.mean(losses)))
            progress.console.print(f"distill: epoch {epoch}: loss {outcome.epoch_losses[-1]:.4f}")
    student.eval()
    return outcome
