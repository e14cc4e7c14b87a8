"""Inference side by side, one run, same inputs: PyTorch eager FP32 vs onnxruntime FP32, optimised FP32, INT8.

Needs a finished pipeline run in the project (artifacts/train, export, quantize, prepare).
The contenders' timed runs are interleaved in rounds, so drifting load on a shared host is shared;
the onnxruntime sessions share one thread pool, so none is slowed by another's spinning threads.
Prints a table with ratios against PyTorch eager, the INT8 ceiling of this CPU (the least time
an INT8 model of this architecture could take on onnxruntime's kernels: its GEMMs, timed in the
same rounds), the reading rules' throughput (texts/s of the shipped INT8 model through
OnnxClassifier.logits at predict's batch size, per train.long_text candidate's window set, on long
reviews of the data and on test texts that fit one window), then one JSON line:
  {"contenders": {...}, "int8_ceiling": {...}, "speedup_b1": ..., "speedup_b32x128": ...,
   "accuracy_drop": ..., "size_ratio": ..., "reading_texts_per_s": {rule: {"long": ..., "short": ...}}}

    python benchmarks/inference.py [--project .] [--runs-b1 200] [--runs-b32 20] [--rounds 5]
                                   [--long-texts 200] [--short-texts 500] [--reading-rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_kernels import empty_call, gemm_call  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.io import read_json, write_json  # noqa: E402
from tasks.core.metrics import softmax  # noqa: E402
from tasks.judging.slices import token_lengths  # noqa: E402
from tasks.training.modeling import load_classifier, torch_logits  # noqa: E402
from tasks.serving.files import MODEL_FILE, OPTIMIZED_FILE, PREDICT_BATCH_SIZE, SERVING_FILE  # noqa: E402
from tasks.serving.long_text import describe, normalise, read_texts  # noqa: E402
from tasks.serving.onnx_model import OnnxClassifier, model_mb, share_one_thread_pool  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402

SHAPES = {"b1": (1, 32), "b32x128": (32, 128)}  # (batch, tokens)
WARMUP = 3


def fixed_shape_inputs(tokenizer, texts: list[str], batch: int, tokens: int) -> dict[str, np.ndarray]:
    """`batch` test texts tokenised, then truncated or padded to exactly `tokens` tokens."""
    enc = tokenizer(texts[:batch], truncation=True, max_length=tokens, padding="max_length", return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """p50/p95/mean ms of each call over `runs` timed calls, taken in `rounds` rounds that visit every
    contender in turn (rotating who goes first), so a slow spell on this shared host hits all alike.
    Each turn starts with one untimed call: the threads of the runtime that ran before may still
    be spinning, and that would be charged to whoever comes next."""
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            calls[name]()
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter()
                calls[name]()
                seconds[name].append(time.perf_counter() - start)
    return {name: {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                   "mean_ms": float(ms.mean())}
            for name, ms in ((n, np.asarray(s) * 1000) for n, s in seconds.items())}


def encoder_gemms(config, rows: int) -> dict[str, tuple[int, int, int]]:
    """The [rows, k] x [k, n] products in one encoder layer: the GEMMs INT8 quantization speeds up."""
    hidden, inner = config.hidden_size, config.intermediate_size
    return {"qkv": (rows, hidden, 3 * hidden), "attention_out": (rows, hidden, hidden),
            "ffn_in": (rows, hidden, inner), "ffn_out": (rows, inner, hidden)}


def kernel_calls(config, batch: int, tokens: int) -> dict[str, Callable[[], object]]:
    """The layer's INT8 GEMMs at their exact sizes, one FP32 GEMM (for the FP32 rate) and an empty call."""
    gemms = encoder_gemms(config, batch * tokens)
    return {**{f"int8_{name}": gemm_call(*shape, int8=True) for name, shape in gemms.items()},
            "fp32_ffn_in": gemm_call(*gemms["ffn_in"], int8=False),
            "empty": empty_call(batch * tokens, config.hidden_size)}


def int8_floor_ms(config, batch: int, tokens: int, kernel_ms: dict[str, float]) -> float:
    """The least time an INT8 model of this architecture can take here on onnxruntime: every layer's
    INT8 GEMMs, each timed alone at its own size (an empty call's cost taken off), plus its
    attention products (activation x activation, FP32 in onnxruntime's QAttention) at the FP32
    GEMM rate; every other op free."""
    gemms = encoder_gemms(config, batch * tokens)
    int8_ms = sum(kernel_ms[f"int8_{name}"] - kernel_ms["empty"] for name in gemms)
    fp32_ms_per_mac = (kernel_ms["fp32_ffn_in"] - kernel_ms["empty"]) / math.prod(gemms["ffn_in"])
    attention_macs = batch * 2 * tokens * tokens * config.hidden_size  # QK^T and softmax x V, all heads
    return config.num_hidden_layers * (int8_ms + attention_macs * fp32_ms_per_mac)


def reading_rules(cfg: PipelineConfig) -> list[dict]:
    """train.long_text's candidates, one per distinct set of windows: the window aggregates combine the same
    model calls' logits (numpy, negligible), so they cost alike."""
    rules, seen = [], set()
    for candidate in cfg.train.long_text.candidates:
        rule = normalise(candidate.model_dump())
        windows = tuple(sorted((k, v) for k, v in rule.items() if k != "aggregate"))
        if windows not in seen:
            seen.add(windows)
            rules.append(rule)
    return rules


def folder_reading_by(folder: Path, rule: dict, view: Path) -> Path:
    """`view`: the served folder's files linked, its serving.json's long_text set to `rule` (the folder is not
    touched), so OnnxClassifier reads long texts by `rule` exactly as a folder exported with it would."""
    view.mkdir()
    for item in folder.iterdir():
        if item.name != SERVING_FILE:
            (view / item.name).symlink_to(item.resolve())
    write_json(view / SERVING_FILE, {**read_json(folder / SERVING_FILE), "long_text": rule})
    return view


def reading_texts(cfg: PipelineConfig, paths: ArtifactPaths, test_texts: list[str], source: str, long_rows: int,
                  short_rows: int) -> dict[str, list[str]]:
    """long: a seeded sample of the data's rows of `source` (e.g. imdb: whole reviews); short: the first test texts
    that fit one window of the shipped model (so every rule reads them alike)."""
    data = load_dataset(paths.root, cfg.data)
    column = cfg.data.source_column
    pool = [] if column is None or column not in data.columns else \
        data.loc[data[column] == source, cfg.data.text_column].dropna().astype(str).tolist()
    picks = np.random.default_rng(cfg.seed).permutation(len(pool))[:long_rows]
    window = read_json(paths.int8_dir / SERVING_FILE)["max_length"]
    fits = token_lengths(paths.int8_dir / "tokenizer.json", test_texts) <= window
    return {"long": [pool[i] for i in picks], "short": [t for t, ok in zip(test_texts, fits) if ok][:short_rows]}


def reading_throughput(models: dict[str, OnnxClassifier], texts: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """texts/s of each model (a rule) on each text set through OnnxClassifier.logits at predict's batch size: the
    median of `rounds` timed passes, interleaved (rotating who goes first) after a short warm-up pass each."""
    calls = {(rule, kind): (lambda m=model, t=batch: m.logits(t, PREDICT_BATCH_SIZE))
             for rule, model in models.items() for kind, batch in texts.items() if batch}
    for (rule, kind) in calls:
        models[rule].logits(texts[kind][:PREDICT_BATCH_SIZE], PREDICT_BATCH_SIZE)
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    keys = list(calls)
    for round_index in range(rounds):
        for key in keys[round_index % len(keys):] + keys[:round_index % len(keys)]:
            start = time.perf_counter()
            calls[key]()
            seconds[key].append(time.perf_counter() - start)
    return {rule: {kind: (round(len(batch) / float(np.median(seconds[(rule, kind)])), 1) if batch else None)
                   for kind, batch in texts.items()} for rule in models}


def windows_per_text(folder: Path, rules: list[dict], texts: list[str]) -> dict[str, float | None]:
    """Mean windows the model reads per text under each rule: what multiplies a long text's cost."""
    if not texts:
        return {describe(rule): None for rule in rules}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    window = read_json(folder / SERVING_FILE)["max_length"]
    return {describe(rule): round(len(read_texts(tokenizer, texts, rule, window).windows) / len(texts), 2)
            for rule in rules}


def measure_reading(cfg: PipelineConfig, paths: ArtifactPaths, test_texts: list[str], args: argparse.Namespace
                    ) -> tuple[dict[str, dict], dict[str, float | None], dict[str, int]]:
    """texts/s per reading rule on long and short texts, windows per long text, and the texts' counts."""
    rules = reading_rules(cfg)
    texts = reading_texts(cfg, paths, test_texts, args.long_source, args.long_texts, args.short_texts)
    with tempfile.TemporaryDirectory(prefix="tunegate-reading-") as scratch:
        models = {describe(rule): OnnxClassifier(folder_reading_by(paths.int8_dir, rule, Path(scratch) / str(i)))
                  for i, rule in enumerate(rules)}
        throughput = reading_throughput(models, texts, args.reading_rounds)
    return throughput, windows_per_text(paths.int8_dir, rules, texts["long"]), {k: len(v) for k, v in texts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--runs-b1", type=int, default=200, help="timed runs at batch 1 x 32 tokens, per contender")
    parser.add_argument("--runs-b32", type=int, default=20, help="timed runs at batch 32 x 128 tokens, per contender")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the timed runs are spread over (interleaved)")
    parser.add_argument("--params", help="params.yaml to read (default: PROJECT/params.yaml)")
    parser.add_argument("--long-texts", type=int, default=200, help="long texts (rows of --long-source) per pass")
    parser.add_argument("--long-source", default="imdb", help="the data's source of long texts (data.source_column)")
    parser.add_argument("--short-texts", type=int, default=500, help="test texts that fit one window, per pass")
    parser.add_argument("--reading-rounds", type=int, default=3, help="timed passes per reading rule and text set")
    parser.add_argument("--out", default="benchmarks/results/inference.json", help="where to keep the JSON")
    args = parser.parse_args()

    paths = ArtifactPaths(Path(args.project).resolve())
    cfg = load_config(Path(args.params) if args.params else paths.root / "params.yaml")
    torch.set_num_threads(os.cpu_count() or 1)
    share_one_thread_pool(torch.get_num_threads())  # one onnxruntime pool, as a server holding several models would
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

    def calls(shape: str) -> dict[str, Callable[[], object]]:
        """The contenders, then the INT8 ceiling's kernels: timed in the same rounds, so under the same load."""
        feed = {k: torch.from_numpy(v) for k, v in inputs[shape].items()}
        runs = {"pytorch_eager_fp32": lambda: model(**feed).logits}
        for name, onnx_model in onnx_models.items():
            onnx_feed = {k: inputs[shape][k] for k in onnx_model.input_names}
            runs[name] = lambda s=onnx_model.session, f=onnx_feed: s.run(["logits"], f)
        return {**runs, **kernel_calls(model.config, *SHAPES[shape])}

    results: dict[str, dict] = {name: {} for name in ["pytorch_eager_fp32", *onnx_models]}
    kernel_ms: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for shape, runs in (("b1", args.runs_b1), ("b32x128", args.runs_b32)):
            timed = time_interleaved(calls(shape), runs, args.rounds)
            kernel_ms[shape] = {name: figures["p50_ms"] for name, figures in timed.items() if name not in results}
            for name in results:
                figures = timed[name]
                results[name][shape] = {**figures, "samples_per_s": round(SHAPES[shape][0] / (figures["mean_ms"] / 1000), 1)}
        # Read as the exported folder reads texts (serving.json's long_text), so the accuracies compare.
        eager_logits = torch_logits(model, tokenizer, texts, max_length, 64, torch.device("cpu"),
                                    long_text=onnx_models["onnxruntime_fp32"].long_text)
    results["pytorch_eager_fp32"].update(mb=round((paths.model_dir / "model.safetensors").stat().st_size / 2**20, 2),
                                         accuracy=float((eager_logits.argmax(axis=1) == labels).mean()))
    for name, onnx_model in onnx_models.items():
        results[name].update(mb=model_mb(onnx_model.folder / onnx_model.model_file),
                             accuracy=float((softmax(onnx_model.logits(texts, 64)).argmax(axis=1) == labels).mean()))

    reading, windows, reading_rows = measure_reading(cfg, paths, texts, args)

    eager, int8 = results["pytorch_eager_fp32"], results["onnxruntime_int8"]
    ceiling = {}
    for shape, (batch, tokens) in SHAPES.items():
        floor = int8_floor_ms(model.config, batch, tokens, kernel_ms[shape])
        ceiling[shape] = {"kernel_p50_ms": {k: round(v, 3) for k, v in kernel_ms[shape].items()},
                          "int8_floor_ms": round(floor, 2), "max_speedup": round(eager[shape]["p50_ms"] / floor, 2)}
    summary = {
        "contenders": results,
        "int8_rung": rung,
        "test_rows": len(texts),
        "threads": torch.get_num_threads(),
        "int8_ceiling": ceiling,
        "speedup_b1": round(eager["b1"]["p50_ms"] / int8["b1"]["p50_ms"], 2),
        "speedup_b32x128": round(eager["b32x128"]["p50_ms"] / int8["b32x128"]["p50_ms"], 2),
        "accuracy_drop": round(eager["accuracy"] - int8["accuracy"], 4),
        "size_ratio": round(int8["mb"] / results["onnxruntime_fp32"]["mb"], 3),
        "reading_texts_per_s": reading,
        "reading_windows_per_long_text": windows,
        "reading_rows": {**reading_rows, "long_source": args.long_source, "batch_size": PREDICT_BATCH_SIZE},
    }
    print_table(results)
    print_ceiling(ceiling, summary)
    print_reading(summary)
    write_json(Path(args.out), summary)
    print(json.dumps(summary))


def print_ceiling(ceiling: dict[str, dict], summary: dict) -> None:
    print("\nINT8 ceiling on this CPU with onnxruntime: each layer's INT8 GEMMs timed alone at their own sizes, its")
    print("attention products at the FP32 GEMM rate, every other op free; timed in the same rounds as the contenders:")
    for shape, c in ceiling.items():
        print(f"  {shape:<8} floor {c['int8_floor_ms']:.2f} ms -> at most {c['max_speedup']:.2f}x PyTorch eager"
              f" (INT8 model: {summary[f'speedup_{shape}']:.2f}x)")


def print_reading(summary: dict) -> None:
    rows = summary["reading_rows"]
    print(f"\nReading rules: the shipped INT8 model through OnnxClassifier.logits, {rows['batch_size']} texts a call, "
          f"on {rows['long']} {rows['long_source']} texts and {rows['short']} test texts within one window:")
    print(f"  {'rule':<32}{'long texts/s':>14}{'windows/text':>14}{'short texts/s':>15}")
    for rule, figures in summary["reading_texts_per_s"].items():
        windows = summary["reading_windows_per_long_text"][rule]
        print(f"  {rule:<32}{_figure(figures['long']):>14}{_figure(windows):>14}{_figure(figures['short']):>15}")


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


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
