"""quantize: dynamic INT8 weights, accepted only if test accuracy holds up against FP32."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig
from tasks.io import staged_dir, write_json
from tasks.metrics import classification_metrics, softmax
from tasks.onnx_model import MODEL_FILE, OnnxClassifier
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, stage_task, write_result
from tasks.errors import TunegateError

LATENCY_ROWS = 64  # texts timed one at a time (batch 1), per model


class QuantizationAccuracyError(TunegateError):
    """INT8 lost more test accuracy than quantize.max_accuracy_drop allows."""


def quantize_folder(fp32_dir: Path, int8_dir: Path, per_channel: bool) -> Path:
    """Copy the serving folder and replace its model with a dynamically quantized INT8 one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(fp32_dir, int8_dir, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
    target = int8_dir / MODEL_FILE
    quantize_dynamic(fp32_dir / MODEL_FILE, target, weight_type=QuantType.QInt8, per_channel=per_channel)
    return target


def batch1_latency_ms(model: OnnxClassifier, texts: list[str]) -> float:
    """Median milliseconds for one text at a time (after one warm-up call)."""
    model.logits(texts[:1], 1)
    times = []
    for text in texts:
        start = time.perf_counter()
        model.logits([text], 1)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def compare(fp32: OnnxClassifier, int8: OnnxClassifier, test: pd.DataFrame, labels: list[str],
            batch_size: int) -> dict:
    """Test accuracy of both models, their prediction agreement and batch-1 latency."""
    texts, y_true = list(test["text"]), test["label"].to_numpy()
    p32, p8 = softmax(fp32.logits(texts, batch_size)), softmax(int8.logits(texts, batch_size))
    acc32 = classification_metrics(y_true, p32, labels)["accuracy"]
    acc8 = classification_metrics(y_true, p8, labels)["accuracy"]
    return {
        "rows": len(texts),
        "fp32_accuracy": acc32,
        "int8_accuracy": acc8,
        "accuracy_drop": acc32 - acc8,
        "agreement": float((p32.argmax(axis=1) == p8.argmax(axis=1)).mean()),
        "fp32_latency_ms_b1": batch1_latency_ms(fp32, texts[:LATENCY_ROWS]),
        "int8_latency_ms_b1": batch1_latency_ms(int8, texts[:LATENCY_ROWS]),
    }


@stage_task("quantize")
def quantize(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Quantize the exported model; fail if INT8 drops more test accuracy than allowed."""
    test = pd.read_parquet(paths.split("test"))
    with staged_dir(paths.stage_dir("quantize")) as out:
        int8_dir = out / paths.int8_dir.name
        quantize_folder(paths.onnx_dir, int8_dir, cfg.quantize.per_channel)
        report = compare(OnnxClassifier(paths.onnx_dir), OnnxClassifier(int8_dir), test,
                         cfg.data.label_names, cfg.quantize.batch_size)
        report["fp32_mb"] = round((paths.onnx_dir / MODEL_FILE).stat().st_size / 2**20, 2)
        report["int8_mb"] = round((int8_dir / MODEL_FILE).stat().st_size / 2**20, 2)
        if report["accuracy_drop"] > cfg.quantize.max_accuracy_drop:
            raise QuantizationAccuracyError(
                f"INT8 test accuracy {report['int8_accuracy']:.4f} is {report['accuracy_drop']:.4f} below FP32 "
                f"{report['fp32_accuracy']:.4f}; quantize.max_accuracy_drop is {cfg.quantize.max_accuracy_drop}")
        write_json(out / "quantization.json", report)
        key = (f"INT8 acc {report['int8_accuracy']:.4f} vs FP32 {report['fp32_accuracy']:.4f}, "
               f"{report['int8_latency_ms_b1']:.1f} vs {report['fp32_latency_ms_b1']:.1f} ms/text")
        return write_result(out, StageResult(stage="quantize", key_figure=key, **report))
