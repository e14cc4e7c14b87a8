"""Serving side: an exported folder run with onnxruntime + tokenizers alone (no torch, no transformers)."""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.core.errors import TunegateError
from tasks.core.io import read_json
from tasks.runtime.files import SERVING_FILE
from tasks.runtime.long_text import (LongTextRuleError, Reading, Wrapper, content_ids, logits_in_groups, normalise,
                                     padded, read_ids, text_batches)


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


CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# onnxruntime's CUDA provider runs FP32 MatMuls in TF32 by default (10-bit mantissa): 3.5e-3 logit
# differences against parity_atol 1e-4. Every CUDA session here turns it off, so what is served is
# what the parity check measured.
CUDA_OPTIONS = {"use_tf32": "0"}
# Where CUDA did not load, the fix (onnxruntime-gpu 1.31+ is a CUDA 13 build).
CUDA_FIX = ("install onnxruntime-gpu[cuda,cudnn] (CUDA 13 and cuDNN 9 wheels) or put the CUDA 13 libraries "
            "(cudart, cuBLAS, cuDNN) on LD_LIBRARY_PATH")
# Ops of quantize's INT8 rungs. The dynamic ones (MatMulInteger, QAttention, DynamicQuantizeLinear) have
# no CUDA kernel, and the rungs were chosen by CPU latency: a model holding any of them is served on CPU.
INT8_OPS = frozenset({"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "QuantizeLinear",
                      "DequantizeLinear", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm"})

Target = Literal["cpu", "cuda", "auto"]
log = logging.getLogger(__name__)


class CudaProviderError(TunegateError):
    """CUDA was required for a session (export.target: cuda) and onnxruntime could not run on it."""


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices the NVIDIA driver reports (cuInit + cuDeviceGetCount); 0 where there is no driver.

    Unlike /dev/nvidia0 this sees GPUs on WSL2 and only the GPUs a container was given. Never raises.
    """
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except (AttributeError, OSError):
            return 0
        return count.value
    return 0


def cuda_usable() -> bool:
    """This onnxruntime build has the CUDA provider and the driver reports a device."""
    import onnxruntime as ort

    # Checked first, so a CPU-only build never touches the driver.
    return CUDA in ort.get_available_providers() and cuda_device_count() > 0


def providers_for(target: Target) -> list[str]:
    """Providers a session for `target` asks for: cpu = CPU only, cuda = CUDA first, auto = CUDA where usable."""
    if target == "cuda" or (target == "auto" and cuda_usable()):
        return [CUDA, CPU]
    return [CPU]


def is_quantized(model: Path) -> bool:
    """Whether the model holds INT8 ops (read from the graph only; external weights are not loaded)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(node.op_type in INT8_OPS for node in graph.node)


def folder_target(serving: dict[str, Any], model: Path) -> Target:
    """Where a served folder's model runs: CPU when serving.json says so or the model is INT8, else auto."""
    declared = serving.get("providers")
    if declared is not None:
        return "auto" if CUDA in declared else "cpu"
    # Folders exported before serving.json named providers. Reading the graph needs `onnx`, which the serving
    # install (requirements/serve.txt) leaves out: there the CPU provider is the only one anyway.
    try:
        return "cpu" if is_quantized(model) else "auto"
    except ModuleNotFoundError:
        return "cpu"


_preloaded = False
_warned_fallback = False


def preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu >= 1.21), once per process.

    In a process that never imported torch nothing else puts them on the library path, and the CUDA
    provider would fail to load.
    """
    global _preloaded
    import onnxruntime as ort

    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - a failed preload shows as the provider not loading, checked after
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def check_providers(requested: list[str], got: list[str], required: bool) -> None:
    """Compare the providers a session got with those asked for: a CUDA that did not load is an error
    where required, else one warning per process."""
    global _warned_fallback
    if CUDA not in requested or CUDA in got:
        return
    message = f"onnxruntime's CUDA provider did not load (session runs on {', '.join(got)}): {CUDA_FIX}"
    if required:
        raise CudaProviderError(message)
    if not _warned_fallback:
        _warned_fallback = True
        log.warning(message)


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


def inference_session(model: Path | bytes, options: Any = None, *, providers: list[str],
                      required: bool = False) -> Any:
    """An onnxruntime session on exactly `providers` (CUDA with TF32 off), without fusions that are slower
    on CPU. A requested CUDA provider that did not load: CudaProviderError if `required`, else a warning."""
    import onnxruntime as ort

    global _sessions_opened
    if CUDA in providers:
        if required and not cuda_usable():
            raise CudaProviderError(f"CUDA is required but this host cannot run it (onnxruntime providers: "
                                    f"{ort.get_available_providers()}, CUDA devices: {cuda_device_count()}): "
                                    "install onnxruntime-gpu on a GPU host (make setup does), or set export.target: cpu")
        preload_cuda_libraries()
    _sessions_opened = True
    options = options or ort.SessionOptions()
    options.use_per_session_threads = not _shared_thread_pool
    disabled = CPU_SLOW_FUSIONS if providers == [CPU] else []
    asked = [(CUDA, dict(CUDA_OPTIONS)) if p == CUDA else p for p in providers]
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=asked,
                                   disabled_optimizers=disabled)
    check_providers(providers, session.get_providers(), required)
    return session


class CalibrationError(TunegateError):
    """serving.json's `calibration` is one this version cannot apply (an unknown method, or no positive temperature)."""


def served_temperature(serving: dict[str, Any]) -> float:
    """The temperature a served folder's logits are divided by (serving.json `calibration`, written by quantize from
    dev): 1.0 for folders without one. Dividing the combined text logits keeps every argmax, so labels never move."""
    calibration = serving.get("calibration")
    if calibration is None:
        return 1.0
    if not isinstance(calibration, dict) or calibration.get("method") != "temperature":
        raise CalibrationError(f"calibration {calibration!r}: only {{'method': 'temperature', ...}} is read")
    temperature = calibration.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise CalibrationError(f"calibration temperature must be a positive number, got {temperature!r}")
    return float(temperature)


class OnnxClassifier:
    """A text classifier from an exported folder: an .onnx model, tokenizer.json and serving.json."""

    def __init__(self, folder: Path, model_file: str | None = None, target: Target | None = None,
                 threads: int | None = None):
        """`target`: cpu (CPU only), cuda (CUDA required: an error where it does not load) or auto (CUDA
        where usable); None = the folder's own (serving.json `providers`, CPU for an INT8 model).
        `threads`: intra-op threads of this session's own pool (inter-op 1); None = onnxruntime's default."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.serving = read_json(folder / SERVING_FILE)
        self.labels: list[str] = self.serving["labels"]
        self.max_length: int = self.serving["max_length"]
        try:
            self.long_text: dict[str, Any] = normalise(self.serving.get("long_text"))
        except LongTextRuleError as exc:
            raise LongTextRuleError(f"{folder / SERVING_FILE}: {exc}") from exc
        try:
            self.temperature = served_temperature(self.serving)
        except CalibrationError as exc:
            raise CalibrationError(f"{folder / SERVING_FILE}: {exc}") from exc
        # `encode` (quantize's calibration batches) truncates and pads; `reader` reads whole texts, which the
        # long_text rule then cuts into windows.
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=self.serving["pad_id"], pad_token=self.serving["pad_token"])
        self.reader = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.reader.no_truncation()
        self.reader.no_padding()
        self.wrapper = Wrapper.of(self.reader)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            # A service sets it so its workers' pools together never exceed the cores (spinning pools slow each other).
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # Idle pool threads spin for a while after each run by default: in a service that CPU is taken from
            # the event loop parsing and answering requests on the same cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.model_file = model_file or self.serving["model_file"]
        self.target: Target = target or folder_target(self.serving, folder / self.model_file)
        self.session = inference_session(folder / self.model_file, options, providers=providers_for(self.target),
                                         required=self.target == "cuda")
        self.providers: list[str] = self.session.get_providers()  # what it got, not what was asked
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
        """[n, classes] float32 logits in input order, texts read by the folder's long_text rule. Texts are
        batched by length (text_batches); a model call holds all the windows of up to batch_size texts."""
        reading = self.read(texts)
        return self.reading_logits(reading, text_batches(reading, texts, batch_size))

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, untruncated, without special tokens."""
        return content_ids(self.reader, texts)

    def read_ids(self, contents: list[list[int]]) -> Reading:
        """The windows the long_text rule reads of texts' content ids."""
        return read_ids(contents, self.long_text, self.max_length, self.wrapper)

    def read(self, texts: list[str]) -> Reading:
        return self.read_ids(self.content_ids(texts))

    def reading_logits(self, reading: Reading, groups: list[Any]) -> np.ndarray:
        """[n, classes] logits of a reading: one model call per group of text indices, windows combined by the rule,
        then divided by the folder's calibration temperature (so softmax gives calibrated probabilities)."""
        logits = logits_in_groups(reading, groups, self.window_logits, self.long_text, len(self.labels))
        return logits if self.temperature == 1.0 else logits / np.float32(self.temperature)

    def inputs(self, windows: list[list[int]]) -> dict[str, np.ndarray]:
        """The model's int64 inputs for token-id windows, padded to the longest (as `encode` pads)."""
        fields = padded(windows, self.serving["pad_id"], self.wrapper.type_id)
        return {name: fields[name] for name in self.input_names}

    def window_logits(self, windows: list[list[int]]) -> np.ndarray:
        """[n_windows, classes] float32 logits, run as one model call."""
        (logits,) = self.session.run(["logits"], self.inputs(windows))
        return logits

    def unknown_token_id(self) -> int | None:
        """The id of tokenizer.json's model.unk_token; None where the tokenizer has none (byte-level BPE)."""
        unk = json.loads(self.tokenizer.to_str())["model"].get("unk_token")
        return None if unk is None else self.tokenizer.token_to_id(unk)
