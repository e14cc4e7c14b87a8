"""A GPU host as far as tunegate can tell (onnxruntime-gpu offering CUDA, one device), on a CPU machine."""

from types import SimpleNamespace

import onnxruntime as ort
import pytest

from tasks.runtime import onnx_model

_REAL_SESSION = ort.InferenceSession


class _SessionOnThisHost:
    """Stands in for onnxruntime.InferenceSession on a GPU host: records what was asked for, runs a real
    CPU session, and reports as got the providers asked for, less CUDA unless `cuda_loads`."""

    requests: list = []
    cuda_loads = True

    def __init__(self, model, options, providers, disabled_optimizers=()):
        type(self).requests.append(providers)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self._real = _REAL_SESSION(model, options, providers=[onnx_model.CPU], disabled_optimizers=disabled_optimizers)
        self._got = [p for p in names if p == onnx_model.CPU or self.cuda_loads]

    def get_providers(self):
        return self._got

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def gpu_host(monkeypatch):
    """onnxruntime-gpu with one CUDA device, as far as tunegate can tell; sessions recorded."""
    preloads = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [onnx_model.CUDA, onnx_model.CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: preloads.append(True), raising=False)
    monkeypatch.setattr(onnx_model, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(onnx_model, "_preloaded", False)
    monkeypatch.setattr(onnx_model, "_warned_fallback", False)
    monkeypatch.setattr(_SessionOnThisHost, "requests", [])
    monkeypatch.setattr(_SessionOnThisHost, "cuda_loads", True)
    monkeypatch.setattr(ort, "InferenceSession", _SessionOnThisHost)
    return SimpleNamespace(sessions=_SessionOnThisHost, preloads=preloads)
