"""gate: judge the model that would ship (the quantized ONNX folder, run by the serving code) on the test split,
against the thresholds in params and the production model; PROMOTE, REJECT or INCONCLUSIVE, with the reasons."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import GateConfig, PipelineConfig
from tasks.core.io import file_sha256, read_json, staged_dir, write_json, write_text
from tasks.core.metrics import reliability_bins
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.judging.compare import (INCONCLUSIVE, PROMOTE, REJECT, Champion, champion_folder, compare_predictions,
                                   find_champion, row_keys, shared_rows)
from tasks.judging.report import key_figure, render_report
from tasks.judging.slices import length_buckets, slice_report, token_lengths
from tasks.judging.stats import metric_intervals, paired_accuracy_se
from tasks.registry.champion import prod_release
from tasks.serving.files import MODEL_FILE, PREDICT_BATCH_SIZE, RELEASE_FILE, TEST_ROWS_FILE
from tasks.serving.latency import batch1_latencies_ms
from tasks.serving.long_text import describe, normalise
from tasks.serving.onnx_model import OnnxClassifier
from tasks.serving.predict import load_served_model, predict_texts

LENGTH_SLICE = "tokens"  # the slice column of length buckets


def served_probabilities(model: OnnxClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """[n, classes] probabilities exactly as `tunegate predict` computes them."""
    frame = predict_texts(model, texts, batch_size)
    return frame[[f"p_{name}" for name in model.labels]].to_numpy()


def check(name: str, value: float | None, threshold: float, at_least: bool, passed: bool | None = None,
          span: dict[str, float] | None = None) -> dict[str, Any]:
    """One absolute check: value (with its interval when there is one), rule, threshold, verdict."""
    if passed is None:
        passed = value >= threshold if at_least else value <= threshold
    record = {"check": name, "value": value, "rule": ">=" if at_least else "<=", "threshold": threshold,
              "passed": bool(passed)}
    if span is not None:
        record["interval"] = [span["low"], span["high"]]
    return record


def quantization_reference(y_true: np.ndarray, pytorch_pred: np.ndarray, shipped_pred: np.ndarray) -> dict[str, Any]:
    """Test accuracy lost by the shipped model against the PyTorch model it came from, with its paired SE."""
    pytorch_right, shipped_right = pytorch_pred == y_true, shipped_pred == y_true
    return {"pytorch_accuracy": float(pytorch_right.mean()), "shipped_accuracy": float(shipped_right.mean()),
            "accuracy_drop": float(pytorch_right.mean() - shipped_right.mean()),
            "accuracy_drop_se": paired_accuracy_se(shipped_right, pytorch_right),
            "agreement": float((pytorch_pred == shipped_pred).mean())}


def absolute_checks(metrics: dict[str, Any], quantization: dict[str, Any], latency_passed: bool,
                    slices: list[dict[str, Any]], cfg: GateConfig) -> list[dict[str, Any]]:
    """The checks that hold or fail on the candidate alone (point values against the bounds in params)."""
    judged = [s for s in slices if s["judged"]]
    return [
        check("test accuracy", metrics["accuracy"]["value"], cfg.min_accuracy, True, span=metrics["accuracy"]),
        check("test macro-F1", metrics["macro_f1"]["value"], cfg.min_macro_f1, True, span=metrics["macro_f1"]),
        check("quantized accuracy drop", quantization["accuracy_drop"], cfg.max_quantization_drop, False),
        # The measured p95 is a timing: it stays in the run record, only its verdict is a tracked output.
        check("p95 latency, batch 1 (ms)", None, cfg.max_latency_ms_b1, False, passed=latency_passed),
        check(f"slices failing ({len(judged)} judged of {len(slices)})", float(sum(not s["passed"] for s in judged)),
              0.0, False),
    ]


def decide(checks: list[dict[str, Any]], comparison: dict[str, Any] | None, cfg: GateConfig) -> dict[str, Any]:
    """REJECT when a check fails; else the comparison's outcome; with no champion, gate.first_run decides."""
    failed = [c["check"] for c in checks if not c["passed"]]
    if failed:
        return {"decision": REJECT, "why": f"failed: {', '.join(failed)}"}
    if comparison is not None:
        return {"decision": comparison["outcome"], "why": comparison["why"]}
    if cfg.first_run == "require_champion":
        return {"decision": INCONCLUSIVE,
                "why": "no production model to compare with (nothing in the registry's prod stage, gate.champion "
                       "null) and gate.first_run is require_champion"}
    return {"decision": PROMOTE, "why": "every check holds; no production model to compare with (nothing in the "
                                        "registry's prod stage, gate.champion null): first run, gate.first_run is "
                                        "promote_if_checks_pass"}


def compare_with_champion(champion: Champion, test: pd.DataFrame, keys: list[str], candidate_pred: np.ndarray,
                          cfg: PipelineConfig) -> dict[str, Any]:
    """The champion's predictions on the test rows both gates judged, compared in pairs with the candidate's."""
    rows = shared_rows(keys, champion)
    model = load_served_model(champion.folder)
    texts = [test["text"].iloc[i] for i in rows]
    champion_pred = served_probabilities(model, texts, cfg.gate.batch_size).argmax(axis=1)
    y_true = test["label"].to_numpy()[rows]
    comparison = compare_predictions(y_true, candidate_pred[rows], champion_pred, len(cfg.data.label_names),
                                     cfg.gate, cfg.seed)
    scope = ("its test rows are not recorded (no test_rows.json in its folder): compared on every candidate test row"
             if champion.test_keys is None else
             f"compared on the {len(rows)} of {len(keys)} candidate test rows its own gate also judged")
    return {"champion": champion.identity(), "candidate_rows": len(keys), "scope": scope, **comparison}


def resolve_champion(cfg: PipelineConfig, paths: ArtifactPaths) -> Champion | None:
    """gate.champion's folder when set; else the registry's prod version (fetched through DVC); else None."""
    labels = cfg.data.label_names
    if cfg.gate.champion:
        return find_champion(champion_folder(cfg.gate.champion, paths.root), cfg.gate.champion, labels)
    prod = prod_release(paths)
    if prod is None:
        return None
    move, folder = prod
    return find_champion(folder, f"registry: {move.stage} = {move.version} ({move.tag})", labels, version=move.version)


def slice_frame(test: pd.DataFrame, predicted: np.ndarray, lengths: np.ndarray, cfg: GateConfig) -> pd.DataFrame:
    """label, predicted and one column per slicing: token-length bucket and each of gate.slice_columns."""
    frame = pd.DataFrame({"label": test["label"].to_numpy(), "predicted": predicted,
                          LENGTH_SLICE: length_buckets(lengths, cfg.length_buckets)})
    for column in cfg.slice_columns:
        frame[column] = test[column].astype(str).to_numpy()
    return frame


def reading_record(model: OnnxClassifier, lengths: np.ndarray) -> dict[str, Any]:
    """How the judged model read the test texts: serving.json's long_text rule, its window and how many test rows
    are longer than that window (whole-text tokens, special tokens included)."""
    rule, window = normalise(model.long_text), int(model.serving["max_length"])
    return {"rule": rule, "described": describe(rule), "window_tokens": window,
            "longer_rows": int((lengths > window).sum())}


def quantize_candidates(quantized: dict[str, Any]) -> dict[str, Any]:
    """What quantize chose among (quantization.json): every candidate's dev figures, the models skipped and why."""
    return {"split": quantized["split"], "rows": quantized["rows"], "fp32_accuracy": quantized["fp32_accuracy"],
            "thresholds": quantized["thresholds"], "chosen_model": quantized["chosen_model"],
            "chosen": quantized["chosen"], "candidates": quantized["rungs"],
            "skipped": {name: record["skipped"] for name, record in quantized["models"].items() if "skipped" in record}}


def write_release(out: Path, shipped: Path, keys: list[str], release: dict[str, Any]) -> None:
    """artifacts/gate/release: the served folder as judged, its test row keys and the release record."""
    folder = out / "release"
    shutil.copytree(shipped, folder)
    write_json(folder / TEST_ROWS_FILE, {"keys": keys})
    write_json(folder / RELEASE_FILE, release)


@stage_task("gate")
def gate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Write decision.json, report.md, reliability.csv and the release folder; never moves the production pointer."""
    g = cfg.gate
    champion = resolve_champion(cfg, paths)
    test = pd.read_parquet(paths.split("test"))
    texts, y_true = list(test["text"]), test["label"].to_numpy()
    model = load_served_model(paths.int8_dir)
    probs = served_probabilities(model, texts, g.batch_size)
    predicted = probs.argmax(axis=1)
    # Dynamic INT8 quantizes activations per call: how many labels change when predict batches the texts.
    batched = served_probabilities(model, texts, PREDICT_BATCH_SIZE).argmax(axis=1)
    batching = {"judged_batch_size": g.batch_size, "predict_batch_size": PREDICT_BATCH_SIZE,
                "agreement": float((batched == predicted).mean()),
                "accuracy_at_predict_batch_size": float((batched == y_true).mean())}
    metrics = metric_intervals(y_true, probs, cfg.data.label_names, g.bootstrap_samples, g.confidence, cfg.seed,
                               g.calibration_bins)
    pytorch = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")
    if list(pytorch["text"]) != texts:
        raise RuntimeError("artifacts/evaluate/predictions.parquet does not hold the test split's rows in order: "
                           "rerun evaluate")
    quantization = quantization_reference(y_true, pytorch["predicted"].to_numpy(), predicted)
    latencies = batch1_latencies_ms(model, texts[: g.latency_rows])
    p95 = float(np.percentile(latencies, 95))
    lengths = token_lengths(paths.int8_dir / "tokenizer.json", texts)
    slices = slice_report(slice_frame(test, predicted, lengths, g), [LENGTH_SLICE, *g.slice_columns], g, cfg.seed,
                          metrics["accuracy"]["value"])
    checks = absolute_checks(metrics, quantization, p95 <= g.max_latency_ms_b1, slices, g)
    keys = row_keys(texts)
    comparison = compare_with_champion(champion, test, keys, predicted, cfg) if champion else None
    shipped = paths.int8_dir / MODEL_FILE
    quantized = read_json(paths.quantization_report)
    candidate = {"model": quantized["chosen_model"], "file": str(shipped.relative_to(paths.root)),
                 "precision": quantized["chosen"], "sha256": file_sha256(shipped),
                 # The run's fingerprint, not a git SHA: the commit holding dvc.lock is made after the run, so a
                 # SHA here would differ between the reference run and every clone that repeats it.
                 "train_run": read_json(paths.train_stamp)["run_fingerprint"]}
    decision = {**decide(checks, comparison, g), "checks": checks, "metrics": metrics,
                "reference": {"pytorch": {k: read_json(paths.metrics)[k] for k in ("accuracy", "macro_f1")},
                              "quantization": quantization, "batching": batching},
                "slices": slices, "long_text": reading_record(model, lengths), "comparison": comparison,
                "first_run": g.first_run if champion is None else None, "candidate": candidate,
                "quantize": quantize_candidates(quantized)}
    with staged_dir(paths.stage_dir("gate")) as out:
        write_json(out / "decision.json", decision)
        write_text(out / "report.md", render_report(decision, g))
        pd.DataFrame(reliability_bins(probs, y_true, g.calibration_bins)).to_csv(out / "reliability.csv", index=False)
        write_release(out, paths.int8_dir, keys, {**candidate, "decision": decision["decision"],
                                                  "labels": cfg.data.label_names, "test_rows": len(keys)})
        result = write_result(out, StageResult(stage="gate", key_figure=key_figure(decision),
                                               decision=decision["decision"]))
    write_run_record(paths, "gate", {"decision": decision["decision"], "latency_ms_b1": {
        "rows": len(latencies), "p50": float(np.median(latencies)), "p95": p95, "threshold": g.max_latency_ms_b1}})
    return result
