"""PyTorch side: where the base model comes from, which device to use, batched logits."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.batching import length_sorted_batches
from tasks.errors import TunegateError

PYPI_PREFIX = "pypi:"


class ModelSourceError(TunegateError, ValueError):
    """train.base_model names no local folder, installed model package or hub id we can load."""


def resolve_base_model(spec: str, root: Path) -> tuple[str, dict[str, Any]]:
    """Turn train.base_model into something from_pretrained loads, plus provenance for the stamp.

    `pypi:<distribution>`: a model folder shipped inside an installed PyPI package (offline);
    an existing folder (relative to the project root): used as is; anything else: a hub id.
    """
    if spec.startswith(PYPI_PREFIX):
        dist = spec[len(PYPI_PREFIX):]
        module_name = dist.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelSourceError(f"{spec}: package {dist!r} is not installed (pip install {dist})") from exc
        folder = Path(module.get_model_path()) if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
        if not (folder / "config.json").is_file():
            raise ModelSourceError(f"{spec}: no model folder with config.json at {folder}")
        from importlib.metadata import version
        return str(folder), {"source": "pypi", "package": dist, "version": version(dist), "path": str(folder)}
    local = Path(spec) if Path(spec).is_absolute() else root / spec
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{local} is a folder but holds no config.json")
        return str(local), {"source": "local", "path": str(local)}
    if spec.startswith((".", "/")) or spec.count("/") > 1:
        raise ModelSourceError(f"train.base_model {spec!r}: no such folder")
    return spec, {"source": "hub", "id": spec}


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


def load_classifier(model_dir: Path, device: torch.device, **options: Any) -> tuple[Any, Any]:
    """The fine-tuned model and tokenizer saved by the train stage (options go to from_pretrained)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **options).to(device)
    return model, tokenizer
