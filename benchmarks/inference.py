"""Inference side by side, one run, same inputs: PyTorch eager FP32 vs onnxruntime FP32, optimised FP32, INT8, for
the teacher and the distilled student; then the real workload, tunegate predict vs a Hugging Face pipeline.

Needs a finished pipeline run in the project (artifacts/train, distill, export, quantize, prepare).
The contenders' timed runs are interleaved in rounds, so drifting load on a shared host is shared;
the onnxruntime sessions share one thread pool, so none is slowed by another's spinning threads.
Prints a table with ratios against the teacher's PyTorch eager, the INT8 ceiling of this CPU (the least time
an INT8 teacher of this architecture could take on onnxruntime's kernels: its GEMMs, timed in the
same rounds), the student's figures (its INT8: the shipped folder when quantize shipped the student, else a
row-wise dynamic INT8 built here (quantize's first rung); its test accuracy drop vs the teacher's FP32 ONNX, one text per call as the gate
judges, with a paired bootstrap interval), the reading rules' throughput (texts/s of the shipped INT8 model through
OnnxClassifier.logits at predict's batch size, per train.long_text candidate's window set, on long
reviews of the data and on test texts that fit one window), the real workload (the test split + IMDB reviews of the
data in no split and not distilled on, texts in file order, end to end with tokenisation, model loading excluded):
`tunegate predict`'s code path on the shipped folder vs `pipeline("text-classification", batch_size=32)` on the FP32
teacher, both reading the first max_length tokens of each text (equal reading), and beside it the shipped folder
with its own long_text rule on the IMDB part; then one JSON line:
  {"contenders": {...}, "int8_ceiling": {...}, "speedup_b1": ..., "speedup_b32x128": ...,
   "accuracy_drop": ..., "size_ratio": ..., "reading_texts_per_s": {rule: {"long": ..., "short": ...}},
   "student_speedup_b1": ..., "student_speedup_b1_rounds": [...], "student_speedup_b32x128": ...,
   "student_speedup_b32x128_rounds": [...], "student_accuracy_drop": ...,
   "student_accuracy_drop_interval": [low, high], "student_agreement": ...,
   "workload_texts_per_s": {"tunegate_predict": ..., "hf_pipeline": ...}, "workload_speedup_vs_hf_pipeline": ...,
   "workload_speedup_vs_hf_pipeline_rounds": [...],
   "workload_shipped_rule": {"rule": ..., "imdb_texts_per_s": ..., "imdb_accuracy": ...}, ...,
   "targets": {key: {"target", "value", "verdict", "pass", "rounds", "note"}}, "all_targets_pass": ...}
Every speedup is the median of its rounds' ratios (each round times both contenders, interleaved); the targets'
*_rounds list them. Without a student (distill.enabled false) its rows say so and the student_* keys are null;
--skip-workload leaves the workload_* keys null. Targets (printed last, and judged in "targets"):
workload_speedup_vs_hf_pipeline >= 8 (at equal reading), student_speedup_b1 >= 7, student_speedup_b32x128 >= 3.5,
each decided on its rounds (benchmarks/_targets.py: PASS when every round meets it, FAIL when none does,
INCONCLUSIVE otherwise); a null value fails.

    python benchmarks/inference.py [--project .] [--runs-b1 200] [--runs-b32 20] [--rounds 5]
                                   [--long-texts 200] [--short-texts 500] [--reading-rounds 3]
                                   [--workload-imdb 1000] [--workload-rounds 5] [--skip-workload]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._folders import folder_reading_by  # noqa: E402
from benchmarks._targets import target_lines, with_targets  # noqa: E402
from benchmarks.cpu_kernels import empty_call, gemm_call  # noqa: E402
from benchmarks.long_reviews import seen_keys, unseen_rows  # noqa: E402
from tasks.core.config import PipelineConfig, QuantizeConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.io import read_json, write_json  # noqa: E402
from tasks.core.metrics import softmax  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.distill import DISTILL_FILE  # noqa: E402
from tasks.judging.slices import token_lengths  # noqa: E402
from tasks.judging.stats import paired_difference  # noqa: E402
from tasks.quantize import build_rung  # noqa: E402
from tasks.runtime.files import MODEL_FILE, OPTIMIZED_FILE, PREDICT_BATCH_SIZE, SERVING_FILE  # noqa: E402
from tasks.runtime.long_text import HEAD, describe, normalise, read_texts  # noqa: E402
from tasks.runtime.onnx_model import CPU, OnnxClassifier, model_mb, share_one_thread_pool  # noqa: E402
from tasks.runtime.predict import predict_texts  # noqa: E402
from tasks.training.modeling import load_classifier, torch_logits  # noqa: E402

SHAPES = {"b1": (1, 32), "b32x128": (32, 128)}  # (batch, tokens)
WARMUP = 3
# The compression targets of the shipped student: (key, comparison, bound, note); a missing value (no student,
# --skip-workload) fails.
TARGETS = (("workload_speedup_vs_hf_pipeline", ">=", 8.0, "equal reading: both read the head of each text"),
           ("student_speedup_b1", ">=", 7.0, "student INT8 vs the teacher's PyTorch eager, 1 x 32"),
           ("student_speedup_b32x128", ">=", 3.5, "student INT8 vs the teacher's PyTorch eager, 32 x 128"))


def fixed_shape_inputs(tokenizer, texts: list[str], batch: int, tokens: int) -> dict[str, np.ndarray]:
    """`batch` test texts tokenised, then truncated or padded to exactly `tokens` tokens."""
    enc = tokenizer(texts[:batch], truncation=True, max_length=tokens, padding="max_length", return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """p50/p95/mean ms of each call over `runs` timed calls, taken in `rounds` rounds that visit every
    contender in turn (rotating who goes first), so a slow spell on this shared host hits all alike; and
    each round's p50 (round_p50_ms), for ratios paired within a round.
    Each turn starts with one untimed call: the threads of the runtime that ran before may still
    be spinning, and that would be charged to whoever comes next."""
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    seconds: dict[str, list[list[float]]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            calls[name]()
            seconds[name].append([])
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter()
                calls[name]()
                seconds[name][-1].append(time.perf_counter() - start)
    return {name: {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                   "mean_ms": float(ms.mean()),
                   "round_p50_ms": [round(float(np.median(r)) * 1000, 4) for r in seconds[name]]}
            for name, ms in ((n, np.asarray([t for r in s for t in r]) * 1000) for n, s in seconds.items())}


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


# The student's contenders, timed beside the teacher's (null when there is no student).
STUDENT_CONTENDERS = ("student_pytorch_eager_fp32", "student_onnxruntime_fp32", "student_onnxruntime_int8")
# An INT8 that quantize did not ship (the model it did not choose) is built as quantize's first rung.
BUILT_RUNG = "dynamic_per_row"
# The real workload's contenders: `tunegate predict`'s code path on the shipped folder, and what a user would write.
TUNEGATE, PIPELINE = "tunegate_predict", "hf_pipeline"
PIPELINE_BATCH_SIZE = 32  # the pipeline(..., batch_size=32)
WORKLOAD_WARMUP_TEXTS = 2 * PIPELINE_BATCH_SIZE  # scored once per contender before the timed passes


@dataclass(frozen=True)
class Eager:
    """A PyTorch contender: model, tokenizer, its folder, and the exported folder whose long_text it reads by."""

    model: Any
    tokenizer: Any
    folder: Path
    exported: Path


@dataclass(frozen=True)
class Student:
    """The distilled student: its PyTorch folder (distill) and its exported FP32 ONNX folder (export)."""

    model_dir: Path
    onnx_dir: Path


def find_student(paths: ArtifactPaths) -> tuple[Student | None, str]:
    """The student the distill and export stages left, or None; with a line saying which, or why there is none."""
    record = paths.stage_dir("distill") / DISTILL_FILE
    if record.is_file() and not read_json(record).get("enabled", True):
        return None, "no student: distill.enabled is false"
    markers = ((paths.student_dir / "config.json", "distill"), (paths.student_onnx_dir / SERVING_FILE, "export"))
    for marker, stage in markers:
        if not marker.is_file():
            return None, f"no student: {marker.parent} is missing (the {stage} stage has not written it)"
    return Student(paths.student_dir, paths.student_onnx_dir), f"student {paths.student_dir}"


def shipped(paths: ArtifactPaths) -> dict[str, str]:
    """What quantize shipped in artifacts/quantize/onnx: {model: student|teacher, rung}."""
    report = read_json(paths.quantization_report)
    return {"model": report.get("chosen_model", "teacher"), "rung": report["chosen"]}


def int8_folder(exported: Path, scratch: Path, cfg: QuantizeConfig) -> Path:
    """`scratch`: a served folder holding a row-wise dynamic INT8 of `exported`'s model, built as quantize builds its
    first rung, with `exported`'s tokenizer and serving files."""
    shutil.copytree(exported, scratch, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
    serving = read_json(exported / SERVING_FILE)
    build_rung(BUILT_RUNG, exported / serving["model_file"], exported / MODEL_FILE, scratch / MODEL_FILE, [], cfg)
    write_json(scratch / SERVING_FILE, {**serving, "model_file": MODEL_FILE, "providers": [CPU]})
    return scratch


def int8_of(model: str, exported: Path, paths: ArtifactPaths, scratch: Path, cfg: QuantizeConfig
            ) -> tuple[OnnxClassifier, str, str]:
    """The INT8 of `model` (student|teacher): the shipped folder when quantize shipped it, else built in `scratch`;
    with its rung and where it came from (shipped | built)."""
    ship = shipped(paths)
    if ship["model"] == model:
        return OnnxClassifier(paths.int8_dir, MODEL_FILE), ship["rung"], "shipped"
    return OnnxClassifier(int8_folder(exported, scratch / model, cfg), MODEL_FILE), BUILT_RUNG, "built"


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def student_judgement(teacher_fp32: OnnxClassifier, student_int8: OnnxClassifier, texts: list[str],
                      labels: np.ndarray, cfg: PipelineConfig) -> dict[str, Any]:
    """The student INT8's test accuracy drop vs the teacher's FP32 ONNX (teacher - student: > 0 = the student is
    worse), each text alone per call as the gate judges (gate.batch_size), with the paired bootstrap interval
    (gate.confidence, gate.bootstrap_samples, seed), and how often their labels agree."""
    teacher = teacher_fp32.logits(texts, cfg.gate.batch_size).argmax(axis=1)
    student = student_int8.logits(texts, cfg.gate.batch_size).argmax(axis=1)
    drop = paired_difference(labels, teacher, student, len(cfg.data.label_names), cfg.gate.bootstrap_samples,
                             cfg.gate.confidence, cfg.seed)["accuracy"]
    return {"student_accuracy_drop": round(drop["value"], 4),
            "student_accuracy_drop_interval": [round(drop["low"], 4), round(drop["high"], 4)],
            "student_accuracy_drop_se": round(drop["se"], 4),
            "student_agreement": round(float((teacher == student).mean()), 4),
            "student_judged": {"split": "test", "rows": len(texts), "batch_size": cfg.gate.batch_size,
                               "confidence": cfg.gate.confidence, "against": "teacher onnxruntime FP32"}}


def no_student_keys() -> dict[str, Any]:
    return {"student_accuracy_drop": None, "student_accuracy_drop_interval": None, "student_accuracy_drop_se": None,
            "student_agreement": None, "student_judged": None}


# ----- the real workload


def workload_rows(cfg: PipelineConfig, paths: ArtifactPaths, imdb_rows: int, source: str) -> tuple[pd.DataFrame, int]:
    """The real workload, in file order: the test split, then `imdb_rows` rows of `source` that no split holds and
    distillation did not read (a seeded sample, kept in the data's order), as text, label (name), part (test |
    source); and how many such unseen rows there were to draw from."""
    test = pd.read_parquet(paths.split("test"))
    frame = pd.DataFrame({"text": test["text"].astype(str).to_list(),
                          "label": [cfg.data.label_names[i] for i in test["label"]], "part": "test"})
    if imdb_rows == 0:
        return frame, 0
    pool = unseen_rows(load_dataset(paths.root, cfg.data), cfg, source, seen_keys(paths))
    picks = np.sort(np.random.default_rng(cfg.seed).permutation(len(pool))[:imdb_rows])
    reviews = pool.iloc[picks].assign(part=source)
    return pd.concat([frame, reviews], ignore_index=True), len(pool)


Scorer = Callable[[list[str]], list[str]]  # texts -> their predicted label names


def tunegate_scorer(folder: Path) -> Scorer:
    """`tunegate predict`'s code path: predict_texts on a served folder at predict's batch size."""
    model = OnnxClassifier(folder)
    return lambda texts: predict_texts(model, texts, PREDICT_BATCH_SIZE)["predicted_label"].to_list()


def pipeline_scorer(model_dir: Path, max_length: int) -> Scorer:
    """What a user would write instead: a Hugging Face text-classification pipeline on the FP32 PyTorch model,
    32 texts a call, truncating at the served max length (so it reads the head of each text, as tunegate here)."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device=-1,
                          batch_size=PIPELINE_BATCH_SIZE, truncation=True, max_length=max_length)
    return lambda texts: [answer["label"] for answer in classifier(texts)]


def time_passes(runs: dict[str, tuple[Scorer, list[str]]], rounds: int) -> dict[str, tuple[list[float], list[str]]]:
    """The seconds of each of `rounds` whole passes of each scorer over its texts, interleaved (rotating who goes
    first) after one warm-up call each on its first texts; with the labels of its last pass."""
    for scorer, texts in runs.values():
        scorer(texts[:WORKLOAD_WARMUP_TEXTS])
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    labels: dict[str, list[str]] = {}
    names = list(runs)
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            scorer, texts = runs[name]
            start = time.perf_counter()
            labels[name] = scorer(texts)
            seconds[name].append(time.perf_counter() - start)
    return {name: (seconds[name], labels[name]) for name in runs}


def accuracy(predicted: list[str], truth: pd.Series) -> float | None:
    """Share of predicted label names equal to the true ones; None for no rows."""
    if not len(truth):
        return None
    return round(float((np.asarray(predicted, dtype=str) == truth.astype(str).to_numpy()).mean()), 4)


def measure_workload(cfg: PipelineConfig, paths: ArtifactPaths, args: argparse.Namespace,
                     scratch: Path) -> dict[str, Any]:
    """texts/s of the shipped folder through predict_texts (read head only) and of the HF pipeline on the FP32
    teacher over the whole workload, their ratio and accuracies; the shipped folder with its own long_text rule on
    the source part."""
    rows, pool = workload_rows(cfg, paths, args.workload_imdb, args.long_source)
    texts, reviews = rows["text"].to_list(), rows[rows["part"] == args.long_source]
    # Equal reading: the shipped folder read head only (a view of it), as the pipeline truncates at its max length.
    head_view = folder_reading_by(paths.int8_dir, dict(HEAD), scratch / "head")
    max_length = read_json(paths.int8_dir / SERVING_FILE)["max_length"]
    runs = {TUNEGATE: (tunegate_scorer(head_view), texts),
            PIPELINE: (pipeline_scorer(paths.model_dir, max_length), texts)}
    own_rule = describe(normalise(read_json(paths.int8_dir / SERVING_FILE).get("long_text")))
    if len(reviews):
        runs["shipped_rule"] = (tunegate_scorer(paths.int8_dir), reviews["text"].to_list())
    timed = time_passes(runs, args.workload_rounds)
    per_s = {name: round(len(texts) / float(np.median(timed[name][0])), 1) for name in (TUNEGATE, PIPELINE)}
    speedups = [round(p / t, 2) for t, p in zip(timed[TUNEGATE][0], timed[PIPELINE][0])]  # paired within a round
    parts = {"all": rows.index, "test": rows.index[rows["part"] == "test"], args.long_source: reviews.index}
    own = timed.get("shipped_rule")
    return {
        "workload_texts_per_s": per_s,
        "workload_speedup_vs_hf_pipeline": round(float(np.median(speedups)), 2),
        "workload_speedup_vs_hf_pipeline_rounds": speedups,
        "workload_accuracy": {name: {part: accuracy([timed[name][1][i] for i in index], rows.loc[index, "label"])
                                     for part, index in parts.items()} for name in (TUNEGATE, PIPELINE)},
        "workload_shipped_rule": {"rule": own_rule,
                                  "imdb_texts_per_s": round(len(reviews) / float(np.median(own[0])), 1)
                                  if own else None,
                                  "imdb_accuracy": accuracy(own[1], reviews["label"]) if own else None},
        "workload_rows": {"test": int((rows["part"] == "test").sum()), "imdb": len(reviews), "imdb_unseen_pool": pool,
                          "source": args.long_source, "reading": f"head ({max_length} tokens)",
                          "predict_batch_size": PREDICT_BATCH_SIZE, "pipeline_batch_size": PIPELINE_BATCH_SIZE,
                          "rounds": args.workload_rounds},
    }


def no_workload_keys() -> dict[str, Any]:
    return {"workload_texts_per_s": None, "workload_speedup_vs_hf_pipeline": None,
            "workload_speedup_vs_hf_pipeline_rounds": None, "workload_accuracy": None,
            "workload_shipped_rule": None, "workload_rows": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--runs-b1", type=int, default=200, help="timed runs at batch 1 x 32 tokens, per contender")
    parser.add_argument("--runs-b32", type=int, default=20, help="timed runs at batch 32 x 128 tokens, per contender")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds the timed runs are spread over (interleaved; the speedup targets are decided on "
                             "each round's ratio)")
    parser.add_argument("--params", help="params.yaml to read (default: PROJECT/params.yaml)")
    parser.add_argument("--long-texts", type=int, default=200, help="long texts (rows of --long-source) per pass")
    parser.add_argument("--long-source", default="imdb", help="the data's source of long texts (data.source_column)")
    parser.add_argument("--short-texts", type=int, default=500, help="test texts that fit one window, per pass")
    parser.add_argument("--reading-rounds", type=int, default=3, help="timed passes per reading rule and text set")
    parser.add_argument("--workload-imdb", type=int, default=1000,
                        help="unseen --long-source rows the real workload adds to the test split")
    parser.add_argument("--workload-rounds", type=int, default=5,
                        help="timed passes per workload contender (rounds: the speedup target is decided on each)")
    parser.add_argument("--skip-workload", action="store_true", help="leave out the real workload (keys null)")
    parser.add_argument("--out", default="benchmarks/results/inference.json", help="where to keep the JSON")
    args = parser.parse_args()

    paths = ArtifactPaths(Path(args.project).resolve())
    cfg = load_config(Path(args.params) if args.params else paths.root / "params.yaml")
    torch.set_num_threads(os.cpu_count() or 1)
    share_one_thread_pool(torch.get_num_threads())  # one onnxruntime pool, as a server holding several models would
    with tempfile.TemporaryDirectory(prefix="tunegate-inference-") as scratch:
        summary = with_targets(measure(cfg, paths, args, Path(scratch)), TARGETS)
    print_table(summary["contenders"], summary["student"])
    print_ceiling(summary["int8_ceiling"], summary)
    print_student(summary)
    print_reading(summary)
    print_workload(summary)
    print_targets(summary)
    write_json(Path(args.out), summary)
    print(json.dumps(summary))


@dataclass
class Contenders:
    """The models timed at the fixed shapes, in table order: the teacher's four, then the student's three (when
    there is a student); with what the summary says of the INT8s and the student."""

    torch: dict[str, Eager]
    onnx: dict[str, OnnxClassifier]
    int8: dict[str, Any]  # the teacher INT8's rung and source (shipped | built)
    student: dict[str, Any]  # present, line, and for a student: its INT8 rung/source, layers, FFN size, params

    def names(self) -> list[str]:
        return [name for name in ORDER if name in self.torch or name in self.onnx]


ORDER = ("pytorch_eager_fp32", "onnxruntime_fp32", "onnxruntime_optimized_fp32", "onnxruntime_int8",
         *STUDENT_CONTENDERS)


def load_contenders(cfg: PipelineConfig, paths: ArtifactPaths, scratch: Path) -> Contenders:
    """The teacher's PyTorch model, FP32 / optimised FP32 ONNX and INT8, and the student's PyTorch model, FP32 ONNX
    and INT8 when there is a student (an INT8 quantize did not ship is built in `scratch`)."""
    model, tokenizer = load_classifier(paths.model_dir, torch.device("cpu"))
    teacher_int8, rung, source = int8_of("teacher", paths.onnx_dir, paths, scratch, cfg.quantize)
    found = Contenders(
        torch={"pytorch_eager_fp32": Eager(model, tokenizer, paths.model_dir, paths.onnx_dir)},
        onnx={"onnxruntime_fp32": OnnxClassifier(paths.onnx_dir, MODEL_FILE),
              "onnxruntime_optimized_fp32": OnnxClassifier(paths.onnx_dir, OPTIMIZED_FILE),
              "onnxruntime_int8": teacher_int8},
        int8={"rung": rung, "source": source}, student={})
    student, line = find_student(paths)
    found.student = {"present": student is not None, "line": line}
    if student is None:
        return found
    student_model, student_tokenizer = load_classifier(student.model_dir, torch.device("cpu"))
    student_int8, student_rung, student_source = int8_of("student", student.onnx_dir, paths, scratch, cfg.quantize)
    found.torch["student_pytorch_eager_fp32"] = Eager(student_model, student_tokenizer, student.model_dir,
                                                      student.onnx_dir)
    found.onnx["student_onnxruntime_fp32"] = OnnxClassifier(student.onnx_dir)
    found.onnx["student_onnxruntime_int8"] = student_int8
    found.student.update(int8_rung=student_rung, int8_source=student_source,
                         layers=student_model.config.num_hidden_layers,
                         intermediate_size=student_model.config.intermediate_size,
                         params=parameter_count(student_model), teacher_params=parameter_count(model))
    return found


def time_fixed_shapes(found: Contenders, texts: list[str], args: argparse.Namespace
                      ) -> tuple[dict[str, dict], dict[str, dict[str, float]]]:
    """Every contender's timings at both fixed shapes, and the INT8 ceiling's kernel p50s, timed in the same rounds."""
    teacher = found.torch["pytorch_eager_fp32"]
    inputs = {name: fixed_shape_inputs(teacher.tokenizer, texts, *shape) for name, shape in SHAPES.items()}

    def calls(shape: str) -> dict[str, Callable[[], object]]:
        """The contenders, then the INT8 ceiling's kernels: timed in the same rounds, so under the same load."""
        feed = {k: torch.from_numpy(v) for k, v in inputs[shape].items()}
        runs: dict[str, Callable[[], object]] = {name: (lambda m=eager.model: m(**feed).logits)
                                                 for name, eager in found.torch.items()}
        for name, onnx_model in found.onnx.items():
            onnx_feed = {k: inputs[shape][k] for k in onnx_model.input_names}
            runs[name] = lambda s=onnx_model.session, f=onnx_feed: s.run(["logits"], f)
        return {**runs, **kernel_calls(teacher.model.config, *SHAPES[shape])}

    results: dict[str, dict] = {name: {} for name in found.names()}
    kernel_ms: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for shape, runs in (("b1", args.runs_b1), ("b32x128", args.runs_b32)):
            timed = time_interleaved(calls(shape), runs, args.rounds)
            kernel_ms[shape] = {name: figures["p50_ms"] for name, figures in timed.items() if name not in results}
            for name in results:
                figures = timed[name]
                results[name][shape] = {**figures,
                                        "samples_per_s": round(SHAPES[shape][0] / (figures["mean_ms"] / 1000), 1)}
    return results, kernel_ms


def size_and_accuracy(found: Contenders, texts: list[str], labels: np.ndarray, max_length: int) -> dict[str, dict]:
    """Each contender's MB and test accuracy at 64 texts a call, texts read as its exported folder reads them
    (serving.json's long_text), so the accuracies compare."""
    figures: dict[str, dict] = {}
    with torch.inference_mode():
        for name, eager in found.torch.items():
            logits = torch_logits(eager.model, eager.tokenizer, texts, max_length, 64, torch.device("cpu"),
                                  long_text=normalise(read_json(eager.exported / SERVING_FILE).get("long_text")))
            figures[name] = {"mb": round((eager.folder / "model.safetensors").stat().st_size / 2**20, 2),
                             "accuracy": float((logits.argmax(axis=1) == labels).mean())}
    for name, onnx_model in found.onnx.items():
        figures[name] = {"mb": model_mb(onnx_model.folder / onnx_model.model_file),
                         "accuracy": float((softmax(onnx_model.logits(texts, 64)).argmax(axis=1) == labels).mean())}
    return figures


def round_ratios(slow: dict | None, fast: dict | None, shape: str) -> list[float] | None:
    """slow's p50 / fast's p50 at `shape` in each round (both timed in it); None when either is missing (no
    student)."""
    if slow is None or fast is None:
        return None
    return [round(s / f, 2) for s, f in zip(slow[shape]["round_p50_ms"], fast[shape]["round_p50_ms"])]


def ratio(slow: dict | None, fast: dict | None, shape: str) -> float | None:
    """The median of the rounds' ratios (round_ratios); None when either is missing."""
    rounds = round_ratios(slow, fast, shape)
    return None if rounds is None else round(float(np.median(rounds)), 2)


def measure(cfg: PipelineConfig, paths: ArtifactPaths, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    test = pd.read_parquet(paths.split("test"))
    texts, labels = list(test["text"]), test["label"].to_numpy()
    max_length = read_json(paths.onnx_dir / SERVING_FILE)["max_length"]
    found = load_contenders(cfg, paths, scratch)
    results, kernel_ms = time_fixed_shapes(found, texts, args)
    for name, figures in size_and_accuracy(found, texts, labels, max_length).items():
        results[name].update(figures)
    reading, windows, reading_rows = measure_reading(cfg, paths, texts, args)
    student_keys = no_student_keys()
    if found.student["present"]:
        student_keys = student_judgement(found.onnx["onnxruntime_fp32"], found.onnx["student_onnxruntime_int8"],
                                         texts, labels, cfg)
    workload = no_workload_keys() if args.skip_workload else measure_workload(cfg, paths, args, scratch)

    eager, int8 = results["pytorch_eager_fp32"], results["onnxruntime_int8"]
    teacher_config = found.torch["pytorch_eager_fp32"].model.config
    ceiling = {}
    for shape, (batch, tokens) in SHAPES.items():
        floor = int8_floor_ms(teacher_config, batch, tokens, kernel_ms[shape])
        ceiling[shape] = {"kernel_p50_ms": {k: round(v, 3) for k, v in kernel_ms[shape].items()},
                          "int8_floor_ms": round(floor, 2), "max_speedup": round(eager[shape]["p50_ms"] / floor, 2)}
    student_int8 = results.get("student_onnxruntime_int8")
    return {
        "contenders": {name: results.get(name) for name in ORDER},  # a student's rows null when there is none
        "int8_rung": found.int8["rung"],
        "int8_source": found.int8["source"],
        "shipped": shipped(paths),
        "test_rows": len(texts),
        "threads": torch.get_num_threads(),
        "int8_ceiling": ceiling,
        "speedup_b1": ratio(eager, int8, "b1"),
        "speedup_b32x128": ratio(eager, int8, "b32x128"),
        "accuracy_drop": round(eager["accuracy"] - int8["accuracy"], 4),
        "size_ratio": round(int8["mb"] / results["onnxruntime_fp32"]["mb"], 3),
        "student": found.student,
        **student_keys,
        "student_speedup_b1": ratio(eager, student_int8, "b1"),
        "student_speedup_b1_rounds": round_ratios(eager, student_int8, "b1"),
        "student_speedup_b32x128": ratio(eager, student_int8, "b32x128"),
        "student_speedup_b32x128_rounds": round_ratios(eager, student_int8, "b32x128"),
        "reading_texts_per_s": reading,
        "reading_windows_per_long_text": windows,
        "reading_rows": {**reading_rows, "long_source": args.long_source, "batch_size": PREDICT_BATCH_SIZE},
        **workload,
    }


def print_ceiling(ceiling: dict[str, dict], summary: dict) -> None:
    print("\nINT8 ceiling on this CPU with onnxruntime: each layer's INT8 GEMMs timed alone at their own sizes, its")
    print("attention products at the FP32 GEMM rate, every other op free; timed in the same rounds as the contenders:")
    for shape, c in ceiling.items():
        print(f"  {shape:<8} floor {c['int8_floor_ms']:.2f} ms -> at most {c['max_speedup']:.2f}x PyTorch eager"
              f" (the teacher's INT8: {summary[f'speedup_{shape}']:.2f}x)")


def print_reading(summary: dict) -> None:
    rows = summary["reading_rows"]
    print(f"\nReading rules: the shipped INT8 model through OnnxClassifier.logits, {rows['batch_size']} texts a call, "
          f"on {rows['long']} {rows['long_source']} texts and {rows['short']} test texts within one window:")
    # The rule on a line of its own when it is longer than its column: the table stays within 80 columns.
    print(f"  {'rule':<32}{'long/s':>10}{'windows/text':>14}{'short/s':>10}")
    for rule, figures in summary["reading_texts_per_s"].items():
        windows = summary["reading_windows_per_long_text"][rule]
        label = rule if len(rule) < 32 else f"{rule}\n  {'':<32}"
        print(f"  {label:<32}{_figure(figures['long']):>10}{_figure(windows):>14}{_figure(figures['short']):>10}")


def print_targets(summary: dict) -> None:
    print(f"\nTargets ({'all pass' if summary['all_targets_pass'] else 'not all pass'}; a missing value fails):")
    print("\n".join(target_lines(summary["targets"])))


def _spread(rounds: list[float]) -> str:
    return f"(rounds {min(rounds):.2f}-{max(rounds):.2f})"


def _figure(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(results: dict[str, dict | None], student: dict[str, Any]) -> None:
    eager = results["pytorch_eager_fp32"]
    header = (f"{'contender':<28}{'b1 p50 ms':>10}{'p95':>8}{'x eager':>9}{'b32x128 p50 ms':>16}{'p95':>9}"
              f"{'x eager':>9}{'samples/s':>11}{'MB':>8}{'accuracy':>10}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        if r is None:
            print(f"{name:<28}{student['line']}")
            continue
        print(f"{name:<28}{r['b1']['p50_ms']:>10.2f}{r['b1']['p95_ms']:>8.2f}"
              f"{ratio(eager, r, 'b1'):>9.2f}{r['b32x128']['p50_ms']:>16.1f}"
              f"{r['b32x128']['p95_ms']:>9.1f}{ratio(eager, r, 'b32x128'):>9.2f}"
              f"{r['b32x128']['samples_per_s']:>11.1f}{r['mb']:>8.1f}{r['accuracy']:>10.4f}")
    print(f"(p50/p95 over timed runs after {WARMUP} warm-up calls; x eager = the median over the rounds of the "
          "teacher's PyTorch eager p50 / this p50, as the summary's speedups; accuracy on the test split at 64 texts a "
          "call)")


def print_student(summary: dict) -> None:
    student = summary["student"]
    if not student["present"]:
        print(f"\nStudent: {student['line']}")
        return
    low, high = summary["student_accuracy_drop_interval"]
    judged = summary["student_judged"]
    print(f"\nStudent: {student['layers']} layers x FFN {student['intermediate_size']}, {student['params'] / 1e6:.1f}M "
          f"params ({student['params'] / student['teacher_params']:.2f}x the teacher's); its INT8: rung "
          f"{student['int8_rung']} ({student['int8_source']})")
    print("  INT8 vs the teacher's PyTorch eager, the median of the rounds' ratios:")
    print(f"    {summary['student_speedup_b1']:.2f}x at batch 1 x 32 {_spread(summary['student_speedup_b1_rounds'])}, "
          f"{summary['student_speedup_b32x128']:.2f}x at 32 x 128 {_spread(summary['student_speedup_b32x128_rounds'])}")
    print(f"  test accuracy drop vs the teacher's FP32 ONNX ({judged['rows']} rows, {judged['batch_size']} text(s) a "
          f"call): {summary['student_accuracy_drop'] * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}] "
          f"({judged['confidence']:.0%} paired bootstrap), agreement {summary['student_agreement']:.2%}")


def print_workload(summary: dict) -> None:
    rows = summary["workload_rows"]
    if rows is None:
        print("\nReal workload: skipped (--skip-workload)")
        return
    per_s, accuracy = summary["workload_texts_per_s"], summary["workload_accuracy"]
    shipped, source = summary["shipped"], rows["source"]
    print(f"\nReal workload: {rows['test']} test texts then {rows['imdb']} unseen {source} texts, in file order, "
          f"end to end (tokenisation included, model loading excluded), {summary['threads']} threads, every contender "
          f"reading {rows['reading']} of each text; median of {rows['rounds']} pass(es):")
    names = {TUNEGATE: f"tunegate predict: shipped {shipped['model']} {shipped['rung']}, "
                       f"{rows['predict_batch_size']} a call",
             PIPELINE: f"HF pipeline: FP32 teacher (PyTorch), batch_size {rows['pipeline_batch_size']}"}
    width = max(len(label) for label in names.values()) + 2
    print(f"  {'contender':<{width}}{'texts/s':>9}{'x pipeline':>12}{'accuracy':>10}{f'{source} acc':>11}")
    for name, label in names.items():
        print(f"  {label:<{width}}{per_s[name]:>9.1f}{per_s[name] / per_s[PIPELINE]:>12.2f}"
              f"{_figure(accuracy[name]['all'], 4):>10}{_figure(accuracy[name][source], 4):>11}")
    print(f"  speedup, the median of the rounds' paired ratios: {summary['workload_speedup_vs_hf_pipeline']:.2f}x "
          f"{_spread(summary['workload_speedup_vs_hf_pipeline_rounds'])}")
    own = summary["workload_shipped_rule"]
    print(f"  beside it, the shipped folder reading by its own rule {own['rule']}, on the {source} part alone: "
          f"{_figure(own['imdb_texts_per_s'])} texts/s, accuracy {_figure(own['imdb_accuracy'], 4)}")


if __name__ == "__main__":
    main()
