"""Batch invariance side by side, one run, same inputs: row-wise dynamic INT8 (quantize's dynamic_per_row, a scale
per token) against per-tensor dynamic INT8 (dynamic_per_tensor, one scale per call), both built here from the
exported FP32 model that quantize shipped (teacher or student), read by its shipped long_text rule.

For each: test accuracy one text per call (as the gate judges) with a paired interval against the other and against
the FP32 export; labels and probabilities of a stress set (the test split's sentences and reviews, mixed) scored
alone, then in random batches of 2, 8, 32 and 64 texts; texts/s at one text per call and at 32 per call (predict's
batch), timed in interleaved rounds. Targets (printed, and `targets` in the JSON): the row-wise model's labels 100%
identical in every batching and its max |delta prob| within quantize.max_batch_prob_delta.

    python benchmarks/batch_invariance.py [--project .] [--params params.yaml] [--rows 400] [--rounds 3]
                                          [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.config import load_config  # noqa: E402
from tasks.core.host import cpu_facts  # noqa: E402
from tasks.core.io import read_json, write_json  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.judging.stats import paired_difference  # noqa: E402
from tasks.quantize import batch_invariance, build_rung  # noqa: E402
from tasks.runtime.files import MODEL_FILE, OPTIMIZED_FILE, PREDICT_BATCH_SIZE, SERVING_FILE  # noqa: E402
from tasks.runtime.onnx_model import OnnxClassifier, share_one_thread_pool  # noqa: E402
from tasks.runtime.parity import classifier_scorer  # noqa: E402

RUNGS = ("dynamic_per_row", "dynamic_per_tensor")
BATCH_SIZES = (2, 8, 32, 64)


def exported_folder(paths: ArtifactPaths) -> tuple[str, Path]:
    """The model quantize shipped (teacher or student) and its exported FP32 folder."""
    chosen = read_json(paths.quantization_report).get("chosen_model", "teacher")
    return chosen, paths.student_onnx_dir if chosen == "student" else paths.onnx_dir


def build_models(exported: Path, scratch: Path, shipped_rule: dict[str, Any]) -> dict[str, OnnxClassifier]:
    """FP32 and both INT8 rungs of `exported` in one folder read by the shipped long_text rule."""
    shutil.copytree(exported, scratch, dirs_exist_ok=True)
    write_json(scratch / SERVING_FILE, {**read_json(scratch / SERVING_FILE), "long_text": shipped_rule})
    optimised = scratch / (OPTIMIZED_FILE if (scratch / OPTIMIZED_FILE).is_file() else MODEL_FILE)
    for rung in RUNGS:
        build_rung(rung, optimised, scratch / MODEL_FILE, scratch / f"{rung}.onnx", [], None)
    models = {rung: OnnxClassifier(scratch, model_file=f"{rung}.onnx", target="cpu") for rung in RUNGS}
    models["fp32"] = OnnxClassifier(scratch, model_file=MODEL_FILE, target="cpu")
    return models


def batch_figures(model: OnnxClassifier, texts: list[str], single: np.ndarray, seed: int) -> dict[str, dict]:
    """Per batch size: share of labels equal to alone and max |delta prob|, over random (seeded) groups, by the
    check quantize applies to every rung."""
    figures = {}
    for size in BATCH_SIZES:
        check = batch_invariance(model, texts, single, size, tolerance=0.0, seed=seed + size)
        figures[str(size)] = {"label_agreement": check["batch_label_agreement"],
                              "max_prob_delta": check["batch_max_prob_delta"]}
    return figures


def texts_per_s(models: dict[str, OnnxClassifier], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """texts/s of each model at 1 and PREDICT_BATCH_SIZE texts per call, in interleaved rounds (best round)."""
    best: dict[str, dict[str, float]] = {name: {} for name in models}
    for _ in range(rounds):
        for batch in (1, PREDICT_BATCH_SIZE):
            for name, model in models.items():
                start = time.perf_counter()
                model.logits(texts, batch)
                rate = len(texts) / (time.perf_counter() - start)
                best[name][f"b{batch}"] = max(best[name].get(f"b{batch}", 0.0), rate)
    return best


def accuracy_figures(probs: dict[str, np.ndarray], truth: np.ndarray, cfg: Any) -> dict[str, Any]:
    """Test accuracy of each model and the paired (bootstrap) accuracy differences that matter."""
    predicted = {name: p.argmax(1) for name, p in probs.items()}
    pairs = {"row_minus_tensor": ("dynamic_per_row", "dynamic_per_tensor"),
             "row_minus_fp32": ("dynamic_per_row", "fp32"), "tensor_minus_fp32": ("dynamic_per_tensor", "fp32")}
    classes = next(iter(probs.values())).shape[1]
    return {"accuracy": {name: float((p == truth).mean()) for name, p in predicted.items()},
            "paired": {key: paired_difference(truth, predicted[a], predicted[b], classes, cfg.gate.bootstrap_samples,
                                              cfg.gate.confidence, cfg.seed)["accuracy"]
                       for key, (a, b) in pairs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: the project's)")
    parser.add_argument("--rows", type=int, default=400, help="test rows in the stress and timing sets")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    cfg = load_config(args.params or args.project / "params.yaml")
    paths = ArtifactPaths(args.project.resolve())
    share_one_thread_pool(max(1, len(os.sched_getaffinity(0))))
    shipped_model, exported = exported_folder(paths)
    shipped_rule = read_json(paths.int8_dir / SERVING_FILE)["long_text"]
    test = pd.read_parquet(paths.split("test"))
    truth = test["label"].to_numpy()
    stress = list(test["text"].sample(n=min(args.rows, len(test)), random_state=cfg.seed))
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(exported, Path(scratch) / "models", shipped_rule)
        print(f"batch invariance of {shipped_model} INT8, reading {shipped_rule}, on {len(test)} test rows; "
              f"{len(stress)} stress texts; CPU {cpu_facts()['model']} ({cpu_facts()['kind']})", file=sys.stderr)
        probs = {name: classifier_scorer(model)(list(test["text"])) for name, model in models.items()}
        positions = {t: i for i, t in enumerate(test["text"])}
        single = {name: probs[name][[positions[t] for t in stress]] for name in RUNGS}
        batching = {name: batch_figures(models[name], stress, single[name], cfg.seed) for name in RUNGS}
        speed = texts_per_s(models, stress, args.rounds)
    result = {"benchmark": "batch_invariance", "cpu": cpu_facts(), "shipped_model": shipped_model,
              "long_text": shipped_rule, "test_rows": len(test), "stress_texts": len(stress),
              **accuracy_figures(probs, truth, cfg), "batching": batching, "texts_per_s": speed,
              "speed_ratio_row_vs_tensor": {b: speed["dynamic_per_row"][b] / speed["dynamic_per_tensor"][b]
                                            for b in ("b1", f"b{PREDICT_BATCH_SIZE}")}}
    worst = batching["dynamic_per_row"]
    result["targets"] = {
        "row_labels_identical": all(f["label_agreement"] == 1.0 for f in worst.values()),
        "row_max_prob_delta_within": max(f["max_prob_delta"] for f in worst.values()) <= cfg.quantize.max_batch_prob_delta}
    print_table(result, cfg.quantize.max_batch_prob_delta)
    line = json.dumps(result)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)


def print_table(result: dict[str, Any], tolerance: float) -> None:
    """The figures in an 80-column table, on stderr (stdout ends with the JSON line)."""
    out = sys.stderr
    print(f"{'':22}{'row-wise':>14}{'per-tensor':>14}{'fp32':>10}", file=out)
    acc = result["accuracy"]
    print(f"{'test accuracy (b1)':22}{acc['dynamic_per_row']:>14.4f}{acc['dynamic_per_tensor']:>14.4f}"
          f"{acc['fp32']:>10.4f}", file=out)
    for size in BATCH_SIZES:
        row, ten = result["batching"]["dynamic_per_row"][str(size)], result["batching"]["dynamic_per_tensor"][str(size)]
        print(f"{f'labels = alone, b{size}':22}{row['label_agreement']:>14.2%}{ten['label_agreement']:>14.2%}", file=out)
        print(f"{f'max |dprob|, b{size}':22}{row['max_prob_delta']:>14.2e}{ten['max_prob_delta']:>14.2e}", file=out)
    for batch, rate in result["speed_ratio_row_vs_tensor"].items():
        speed = result["texts_per_s"]
        print(f"{f'texts/s, {batch}':22}{speed['dynamic_per_row'][batch]:>14.1f}"
              f"{speed['dynamic_per_tensor'][batch]:>14.1f}{speed['fp32'][batch]:>10.1f}  row/tensor {rate:.2f}x",
              file=out)
    for key, pair in result["paired"].items():
        print(f"{key:22}{pair['value']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]", file=out)
    targets = result["targets"]
    print(f"targets: row-wise labels identical in every batching: {'pass' if targets['row_labels_identical'] else 'FAIL'}; "
          f"max |dprob| <= {tolerance:g}: {'pass' if targets['row_max_prob_delta_within'] else 'FAIL'}", file=out)


if __name__ == "__main__":
    main()
