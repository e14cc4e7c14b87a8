"""Inference side by side, one run, same inputs: PyTorch eager FP32 vs onnxruntime FP32, optimised FP32, INT8.

Needs a finished pipeline run in the project (artifacts/train, export, quantize, prepare).
Prints a table with ratios against PyTorch eager, then one JSON line:
  {"contenders": {...}, "speedup_b1": ..., "speedup_b32x128": ..., "accuracy_drop": ..., "size_ratio": ...}

    python benchmarks/inference.py [--project .] [--runs-b1 200] [--runs-b32 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.io import read_json, write_json  # noqa: E402
from tasks.metrics import softmax  # noqa: E402
from tasks.modeling import load_classifier, torch_logits  # noqa: E402
from tasks.onnx_model import MODEL_FILE, OPTIMIZED_FILE, OnnxClassifier, model_mb  # noqa: E402
from tasks.paths import ArtifactPaths  # noqa: E402

SHAPES = {"b1": (1, 32), "b32x128": (32, 128)}  # (batch, tokens)
WARMUP = 3


def fixed_shape_inputs(tokenizer, texts: list[str], batch: int, tokens: int) -> dict[str, np.ndarray]:
    """`batch` test texts tokenised, then truncated or padded to exactly `tokens` tokens."""
    enc = tokenizer(texts[:batch], truncation=True, max_length=tokens, padding="max_length", return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def time_call(call, runs: int) -> dict[str, float]:
    for _ in range(WARMUP):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--runs-b1", type=int, default=200, help="timed runs at batch 1 x 32 tokens")
    parser.add_argument("--runs-b32", type=int, default=20, help="timed runs at batch 32 x 128 tokens")
    parser.add_argument("--out", default="benchmarks/results/inference.json", help="where to keep the JSON")
    args = parser.parse_args()

    paths = ArtifactPaths(Path(args.project).resolve())
    torch.set_num_threads(os.cpu_count() or 1)
    test = pd.read_parquet(paths.split("test"))
    texts, labels = list(test["text"]), test["label"].to_numpy()
    max_length = read_json(paths.onnx_dir / "serving.json")["max_length"]
    model, tokenizer = load_classifier(paths.model_dir, torch.device("cpu"))
    inputs = {name: fixed_shape_inputs(tokenizer, texts, *shape) for name, shape in SHAPES.items()}
    rung = read_json(paths.quantization_report)["chosen"]

    onnx_models = {
        "onnxruntime_fp32": OnnxClassifier(paths.onnx_dir, MODEL_FILE),
        "onnxruntime_optimized_fp32": OnnxClassifier(paths.onnx_dir, OPTIMIZED_FILE),
        "onnxruntime_int8": OnnxClassifier(paths.int8_dir, MODEL_FILE),
    }
    results: dict[str, dict] = {}

    with torch.inference_mode():
        feeds = {name: {k: torch.from_numpy(v) for k, v in batch.items()} for name, batch in inputs.items()}
        results["pytorch_eager_fp32"] = {
            **{shape: time_call(lambda f=feeds[shape]: model(**f).logits, runs)
               for shape, runs in (("b1", args.runs_b1), ("b32x128", args.runs_b32))},
            "mb": round((paths.model_dir / "model.safetensors").stat().st_size / 2**20, 2),
            "accuracy": float((torch_logits(model, tokenizer, texts, max_length, 64, torch.device("cpu"))
                               .argmax(axis=1) == labels).mean()),
        }
    for name, onnx_model in onnx_models.items():
        session = onnx_model.session
        results[name] = {
            **{shape: time_call(lambda f=inputs[shape]: session.run(["logits"], {k: f[k] for k in onnx_model.input_names}), runs)
               for shape, runs in (("b1", args.runs_b1), ("b32x128", args.runs_b32))},
            "mb": model_mb(onnx_model.folder / onnx_model.model_file),
            "accuracy": float((softmax(onnx_model.logits(texts, 64)).argmax(axis=1) == labels).mean()),
        }
    for name, figures in results.items():
        for shape, (batch, _) in SHAPES.items():
            figures[shape]["samples_per_s"] = round(batch / (figures[shape]["mean_ms"] / 1000), 1)

    eager, int8 = results["pytorch_eager_fp32"], results["onnxruntime_int8"]
    summary = {
        "contenders": results,
        "int8_rung": rung,
        "test_rows": len(texts),
        "threads": torch.get_num_threads(),
        "speedup_b1": round(eager["b1"]["p50_ms"] / int8["b1"]["p50_ms"], 2),
        "speedup_b32x128": round(eager["b32x128"]["p50_ms"] / int8["b32x128"]["p50_ms"], 2),
        "accuracy_drop": round(eager["accuracy"] - int8["accuracy"], 4),
        "size_ratio": round(int8["mb"] / results["onnxruntime_fp32"]["mb"], 3),
    }
    print_table(results)
    write_json(Path(args.out), summary)
    print(json.dumps(summary))


def print_table(results: dict[str, dict]) -> None:
    eager = results["pytorch_eager_fp32"]
    header = (f"{'contender':<28}{'b1 p50 ms':>10}{'p95':>8}{'x eager':>9}{'b32x128 p50 ms':>16}{'p95':>9}"
              f"{'x eager':>9}{'samples/s':>11}{'MB':>8}{'accuracy':>10}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<28}{r['b1']['p50_ms']:>10.2f}{r['b1']['p95_ms']:>8.2f}"
              f"{eager['b1']['p50_ms'] / r['b1']['p50_ms']:>9.2f}{r['b32x128']['p50_ms']:>16.1f}"
              f"{r['b32x128']['p95_ms']:>9.1f}{eager['b32x128']['p50_ms'] / r['b32x128']['p50_ms']:>9.2f}"
              f"{r['b32x128']['samples_per_s']:>11.1f}{r['mb']:>8.1f}{r['accuracy']:>10.4f}")
    print(f"(p50/p95 over timed runs after {WARMUP} warm-up calls; x eager = PyTorch eager p50 / this p50)")


if __name__ == "__main__":
    main()
