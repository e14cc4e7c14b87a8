"""PyTorch side: which device to use, loading the trained classifier, batched logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.batching import length_sorted_batches
from tasks.core.errors import TunegateError


class UnsafeWeightsError(TunegateError):
    """A model folder has no safetensors weights (only pickled ones, which can run code when loaded)."""


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def bf16_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@torch.inference_mode()
def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int,
                 device: torch.device) -> np.ndarray:
    """[n, classes] float32 logits, computed in length-sorted batches, returned in input order."""
    model.eval()
    lengths = [len(t) for t in texts]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for idx in length_sorted_batches(lengths, batch_size):
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
            logits = model(**enc).logits
        out[idx] = logits.float().cpu().numpy()
    return out


def quiet_transformers() -> None:
    """No weight-loading bars or load reports: a fresh classifier head is expected here, not news."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def require_safetensors(model: str | Path) -> None:
    """Refuse a local model folder without *.safetensors weights (a hub id is checked by from_pretrained)."""
    folder = Path(model)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) or ["no weights file"]
        raise UnsafeWeightsError(
            f"{folder} has no safetensors weights ({', '.join(pickled)}); tunegate loads only safetensors, "
            "since pickled weights can run code when loaded. Convert it once, on a machine where you trust "
            "it: load it with transformers and save_pretrained() it (which writes model.safetensors)")


def load_classifier(model_dir: Path, device: torch.device, **options: Any) -> tuple[Any, Any]:
    """The fine-tuned model and tokenizer saved by the train stage (options go to from_pretrained)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    require_safetensors(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # safetensors only: pickled (.bin) weights can run code when loaded.
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True, **options).to(device)
    return model, tokenizer
