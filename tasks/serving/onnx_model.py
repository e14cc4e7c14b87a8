"""Serving side: an exported folder run with onnxruntime + tokenizers alone (no torch, no transformers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.batching import length_sorted_batches
from tasks.core.io import read_json
from tasks.serving.files import SERVING_FILE



def external_data_name(model_file: str) -> str:
    """Where a model's weights go when stored outside the .onnx file."""
    return f"{model_file}.data"


def has_external_data(path: Path) -> bool:
    return path.with_name(external_data_name(path.name)).exists()


def model_mb(path: Path) -> float:
    """Size of a model on disk: the .onnx file plus its external weights, if any."""
    files = [path, path.with_name(external_data_name(path.name))]
    return round(sum(p.stat().st_size for p in files if p.exists()) / 2**20, 2)


def load_onnx(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))  # pulls in external data beside it, if any


def save_onnx(model: Any, path: Path, external: bool) -> None:
    """Save a ModelProto; with external=True all weights go to one `<name>.data` file beside it."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=external_data_name(path.name), size_threshold=1024)


def copy_model(source: Path, target: Path) -> None:
    """Copy a model under a new name; external weights are re-saved, since the .onnx names its data file."""
    if has_external_data(source):
        save_onnx(load_onnx(source), target, external=True)
    else:
        shutil.copy2(source, target)


# onnxruntime 1.32's CPU SkipLayerNormalization kernel is 1.2-4.7x slower than the LayerNormalization
# and Add it replaces (`python benchmarks/cpu_kernels.py`); CUDA's is fast. So graphs are saved
# without that fusion, and CPU sessions are told not to redo it at load time.
CPU_SLOW_FUSIONS = ["SkipLayerNormFusion"]


def execution_providers() -> list[str]:
    """CUDA when this onnxruntime build has it and an NVIDIA device exists, else CPU.

    Asking onnxruntime-gpu for CUDA on a host without a GPU logs a long CUDA error before it
    falls back; checking for the device first keeps that to nothing.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and Path("/dev/nvidia0").exists():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_shared_thread_pool = False
_sessions_opened = False


def share_one_thread_pool(threads: int) -> None:
    """Make every onnxruntime session this process opens run on one intra-op pool of `threads`
    threads. Each session's own pool keeps spinning for a while after its run and, on a small
    host, halves the speed of the next session's run. onnxruntime fixes its pools when the first
    session opens (and ignores a later call), so calling this after that is an error."""
    global _shared_thread_pool
    from onnxruntime.capi import _pybind_state

    if _sessions_opened:
        raise RuntimeError("share_one_thread_pool must be called before the process opens its first onnxruntime session")
    _pybind_state.set_global_thread_pool_sizes(threads, 1)
    _shared_thread_pool = True


def inference_session(model: Path | bytes, options: Any = None, providers: list[str] | None = None) -> Any:
    """An onnxruntime session on the best providers here, without fusions that are slower on CPU."""
    import onnxruntime as ort

    global _sessions_opened
    _sessions_opened = True
    providers = providers or execution_providers()
    options = options or ort.SessionOptions()
    options.use_per_session_threads = not _shared_thread_pool
    disabled = CPU_SLOW_FUSIONS if providers == ["CPUExecutionProvider"] else []
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers,
                                disabled_optimizers=disabled)


class OnnxClassifier:
    """A text classifier from an exported folder: an .onnx model, tokenizer.json and serving.json."""

    def __init__(self, folder: Path, model_file: str | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.serving = read_json(folder / SERVING_FILE)
        self.labels: list[str] = self.serving["labels"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.serving["max_length"])
        self.tokenizer.enable_padding(pad_id=self.serving["pad_id"], pad_token=self.serving["pad_token"])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.model_file = model_file or self.serving["model_file"]
        self.session = inference_session(folder / self.model_file, options)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenise and pad one batch into the model's int64 inputs."""
        encodings = self.tokenizer.encode_batch(texts)
        fields = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(fields[name], dtype=np.int64) for name in self.input_names}

    def logits(self, texts: list[str], batch_size: int) -> np.ndarray:
        """[n, classes] float32 logits in input order (batched by length)."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for idx in length_sorted_batches([len(t) for t in texts], batch_size):
            (batch_logits,) = self.session.run(["logits"], self.encode([texts[i] for i in idx]))
            out[idx] = batch_logits
        return out
