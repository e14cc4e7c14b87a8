"""Parameter-efficient fine-tuning: LoRA adapters (peft) trained, then merged into plain weights."""

from __future__ import annotations

from typing import Any

from tasks.core.config import LoraConfig


def add_lora(model: Any, cfg: LoraConfig) -> Any:
    """Wrap a sequence classifier with LoRA adapters; the classification head stays fully trainable."""
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model

    # SEQ_CLS makes peft keep the (fresh) classifier head trainable and saved in full.
    peft_cfg = PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha,
                              lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
    return get_peft_model(model, peft_cfg)


def merge_lora(model: Any) -> Any:
    """The plain transformers model with adapters folded into its weights (later stages see no peft)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def trainable_share(model: Any) -> float:
    """Fraction of parameters that receive gradients."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / total
