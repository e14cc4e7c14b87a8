"""Batch-1 latency of a served model: the one clock quantize (median per rung) and the gate (p95) read."""

from __future__ import annotations

import time

import numpy as np

from tasks.runtime.onnx_model import OnnxClassifier


def batch1_latencies_ms(model: OnnxClassifier, texts: list[str]) -> np.ndarray:
    """Milliseconds per text, each run alone (batch 1) after one untimed warm-up call; shape [len(texts)]."""
    if texts:
        model.logits(texts[:1], 1)  # the first call pays for lazy allocations: not what a served request costs
    times = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        start = time.perf_counter()
        model.logits([text], 1)
        times[i] = (time.perf_counter() - start) * 1000
    return times
