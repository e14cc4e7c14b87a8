"""PyTorch side: which device to use, loading the trained classifier, batched logits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.errors import TunegateError
from tasks.runtime.long_text import Wrapper, logits_in_groups, padded, read_texts, text_batches, untruncated


class UnsafeWeightsError(TunegateError):
    """A model folder has no safetensors weights (only pickled ones, which can run code when loaded)."""


class CudaUnavailableError(TunegateError):
    """train.device is 'cuda' but this torch cannot use a GPU here (a CPU build, no device, or too old a driver)."""


class DeviceMismatchError(TunegateError):
    """The accelerator ended up on another device than the one train.device resolved to."""


def cuda_unusable_reason() -> str | None:
    """Why torch cannot train on CUDA here, in words; None when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU: none visible, "
                f"or the driver is older than CUDA {torch.version.cuda} needs")
    return None


def choose_device(requested: str) -> tuple[torch.device, str]:
    """The device train.device names (auto: CUDA when usable), and one line saying which and why."""
    if requested == "cpu":
        return torch.device("cpu"), "cpu (train.device: cpu)"
    reason = cuda_unusable_reason()
    if reason is not None:
        if requested == "cuda":
            raise CudaUnavailableError(
                f"train.device is 'cuda' but {reason}. Install the CUDA build of torch that matches the driver "
                "(`nvidia-smi` shows the newest CUDA the driver supports; see docs/gpu.md), or set "
                "train.device: auto (or cpu)")
        return torch.device("cpu"), f"auto -> cpu: {reason}"
    device = torch.device("cuda")
    precision = "bf16 native" if bf16_enabled(device) else "fp32: no native bf16"
    return device, f"{requested} -> cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()}, {precision})"


def pick_device(requested: str) -> torch.device:
    """The device train.device names; 'cuda' where CUDA is unusable raises CudaUnavailableError."""
    return choose_device(requested)[0]


def bf16_enabled(device: torch.device) -> bool:
    """bf16 autocast only where the GPU computes bf16 natively (emulated bf16, as on V100/T4, is slow)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def precision(device: torch.device) -> str:
    """The compute precision training uses on `device`: 'bf16' (autocast) or 'fp32'."""
    return "bf16" if bf16_enabled(device) else "fp32"


@contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Within: torch's deterministic kernels when `enabled` (bit-exact resume on CUDA); restored after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with ExitStack() as stack:
        if enabled and device.type == "cuda":
            # cuBLAS is deterministic only with a fixed workspace; read when its handle is first created.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            from torch.nn.attention import SDPBackend, sdpa_kernel

            # Flash and cuDNN attention backwards accumulate in a varying order; memory-efficient attention
            # has a deterministic backward under use_deterministic_algorithms, math is exact.
            stack.enter_context(sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]))
        # warn_only: an op with no deterministic CUDA kernel (torch lists NLLLoss) names itself in a warning
        # instead of stopping a long run; benchmarks/gpu_check.py checks that resume stays bit-exact.
        torch.use_deterministic_algorithms(enabled, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@torch.inference_mode()
def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int,
                 device: torch.device, *, long_text: dict[str, Any]) -> np.ndarray:
    """[n, classes] float32 logits in input order, texts read by the `long_text` rule (tasks.runtime.long_text)
    exactly as the served ONNX model reads them, in the same batches: a model call holds all the windows of up to
    batch_size texts."""
    model.eval()
    # The fast (tokenizers) tokenizer, the one the served folder ships; cloned once without its truncation.
    backend = untruncated(tokenizer.backend_tokenizer)
    wrapper = Wrapper.of(backend)
    reading = read_texts(backend, texts, long_text, max_length, wrapper)
    names = set(tokenizer.model_input_names)

    def run(windows: list[list[int]]) -> np.ndarray:
        fields = padded(windows, tokenizer.pad_token_id, wrapper.type_id)
        inputs = {name: torch.from_numpy(value).to(device) for name, value in fields.items() if name in names}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
            logits = model(**inputs).logits
        return logits.float().cpu().numpy()

    return logits_in_groups(reading, text_batches(reading, texts, batch_size), run, long_text, model.config.num_labels)


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
    options.setdefault("dtype", torch.float32)  # transformers 5 defaults to the stored dtype ("auto")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True, **options).to(device)
    return model, tokenizer
