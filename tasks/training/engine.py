"""Pieces every training loop here shares (train's fine-tuning, distill's distillation): seeding, AdamW with a
linear warm-up, logits of pre-tokenised rows, saving a tokenizer reproducibly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.batching import length_sorted_batches
from tasks.training.modeling import bf16_enabled
from tasks.training.tokens import TokenizedTexts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adamw_with_warmup(model: Any, learning_rate: float, weight_decay: float, warmup_ratio: float, total_steps: int,
                      device: torch.device) -> tuple[Any, Any]:
    """AdamW over trainable weights (no decay on biases and LayerNorm), linear warm-up then decay to zero."""
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    # One fused kernel per step instead of a loop over tensors (CUDA; CPU too since torch 2.4).
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        fused=device.type in ("cuda", "cpu"),
    )
    warmup = int(round(warmup_ratio * total_steps))
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


@torch.inference_mode()
def tokens_logits(model: Any, tokens: TokenizedTexts, batch_size: int, device: torch.device,
                  rows: np.ndarray | None = None) -> np.ndarray:
    """[n, classes] float32 logits of pre-tokenised rows (all, or those of `rows`), in length-sorted batches,
    returned in input order (eval mode)."""
    model.eval()
    rows = np.arange(len(tokens)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    for idx in length_sorted_batches(tokens.lengths[rows], batch_size):
        batch = {k: v.to(device) for k, v in tokens.batch(rows[idx]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
            out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """save_pretrained, without the truncation/padding state a call leaves in a fast tokenizer: tokenizer.json
    would otherwise depend on whether the token cache was hit (no call) or not."""
    if (backend := getattr(tokenizer, "backend_tokenizer", None)) is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(folder)
