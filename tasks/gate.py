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
from tasks.core.metrics import reliability_bins, softmax
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.judging.card import CARD_FILE, CardInputs, render_card
from tasks.judging.compare import (INCONCLUSIVE, PROMOTE, REJECT, Champion, champion_folder, compare_predictions,
                                   find_champion, row_keys, shared_rows)
from tasks.judging.cost import cost_record, window_cost
from tasks.judging.estimate import expected_accuracy
from tasks.judging.report import key_figure, render_report
from tasks.judging.selection import gate_selection, read_selection
from tasks.judging.reweight import accuracy_on_live_traffic, read_live_texts
from tasks.judging.shadow import ShadowError, shadow_replay
from tasks.judging.slices import length_buckets, slice_report, token_lengths
from tasks.judging.stats import (CHECK_FAIL, CHECK_INCONCLUSIVE, CHECK_PASS, ece_interval, metric_intervals,
                                 paired_accuracy_se, paired_cost)
from tasks.registry.champion import prod_release
from tasks.registry.tags import ARTIFACT
from tasks.runtime.files import MODEL_FILE, PREDICT_BATCH_SIZE, RELEASE_FILE, SERVING_FILE, TEST_ROWS_FILE
from tasks.runtime.latency import batch1_latencies_ms
from tasks.runtime.long_text import describe, normalise
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.parity import write_certificate
from tasks.runtime.predict import load_served_model, predict_texts
from tasks.runtime.prediction_log import read_prediction_log

LENGTH_SLICE = "tokens"  # the slice column of length buckets
# The gate's params a model card states: how its intervals were computed and how slices were judged.
CARD_PARAMS = {"confidence", "bootstrap_samples", "min_slice_rows", "min_slice_accuracy", "max_slice_gap"}


def served_probabilities(model: OnnxClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """[n, classes] probabilities exactly as `tunegate predict` computes them."""
    frame = predict_texts(model, texts, batch_size)
    return frame[[f"p_{name}" for name in model.labels]].to_numpy()


def check(name: str, value: float, threshold: float, at_least: bool,
          span: dict[str, float] | None = None) -> dict[str, Any]:
    """One check of a point value: value (with its interval when there is one), rule, threshold, outcome."""
    passed = value >= threshold if at_least else value <= threshold
    record = {"check": name, "value": value, "rule": ">=" if at_least else "<=", "threshold": threshold,
              "passed": bool(passed), "outcome": CHECK_PASS if passed else CHECK_FAIL}
    if span is not None:
        record["interval"] = [span["low"], span["high"]]
    return record


def cost_check(name: str, cost: dict[str, Any]) -> dict[str, Any]:
    """A check decided on the interval of a paired cost (stats.paired_cost): `passed` is None when inconclusive,
    with the test rows that would settle it."""
    return {"check": name, "value": cost["value"], "rule": "<=", "threshold": cost["bound"],
            "passed": {CHECK_PASS: True, CHECK_FAIL: False}.get(cost["outcome"]), "outcome": cost["outcome"],
            "interval": [cost["low"], cost["high"]], "rows": cost["rows"], "rows_needed": cost["rows_needed"]}


def shipped_bounds(cfg: PipelineConfig, model: str) -> dict[str, Any]:
    """What the shipped model may give up against the teacher's PyTorch model on test: the teacher's INT8 answers to
    gate.max_quantization_drop; the student (distillation and quantization) to distill.max_accuracy_drop and
    distill.min_agreement, the bounds quantize chose it by on dev."""
    if model == "student":
        return {"model": model, "max_accuracy_drop": cfg.distill.max_accuracy_drop,
                "min_agreement": cfg.distill.min_agreement}
    return {"model": model, "max_accuracy_drop": cfg.gate.max_quantization_drop, "min_agreement": None}


def quantization_reference(y_true: np.ndarray, pytorch_pred: np.ndarray, shipped_pred: np.ndarray, n_classes: int,
                           cfg: GateConfig, seed: int, bounds: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy lost by the shipped model against the PyTorch model it came from (quantization, and
    distillation when the student ships): paired SE, interval and outcome against bounds["max_accuracy_drop"]."""
    pytorch_right, shipped_right = pytorch_pred == y_true, shipped_pred == y_true
    cost = paired_cost(y_true, pytorch_pred, shipped_pred, n_classes, bounds["max_accuracy_drop"],
                       cfg.bootstrap_samples, cfg.confidence, seed)
    return {"pytorch_accuracy": float(pytorch_right.mean()), "shipped_accuracy": float(shipped_right.mean()),
            "accuracy_drop": cost["value"], "accuracy_drop_se": paired_accuracy_se(shipped_right, pytorch_right),
            "agreement": float((pytorch_pred == shipped_pred).mean()), "drop": cost, "bounds": bounds}


def absolute_checks(metrics: dict[str, Any], quantization: dict[str, Any], cost: dict[str, Any],
                    batching: dict[str, Any], slices: list[dict[str, Any]], cfg: GateConfig) -> list[dict[str, Any]]:
    """The candidate's checks: point values against the bounds in params, except the accuracy it gives up against
    its PyTorch model, decided on its paired interval (pass, fail or inconclusive)."""
    judged = [s for s in slices if s["judged"]]
    student = quantization["bounds"]["model"] == "student"
    # The student's cost is distillation and quantization together, against its own bounds (distill's).
    fidelity = [check("agreement with the teacher's PyTorch (share)", quantization["agreement"],
                      quantization["bounds"]["min_agreement"], True)] if student else []
    return [
        check("test accuracy", metrics["accuracy"]["value"], cfg.min_accuracy, True, span=metrics["accuracy"]),
        check("test macro-F1", metrics["macro_f1"]["value"], cfg.min_macro_f1, True, span=metrics["macro_f1"]),
        cost_check("student accuracy drop vs the teacher's PyTorch" if student else "quantized accuracy drop",
                   quantization["drop"]),
        *fidelity,
        # Counted, not timed (tasks/judging/cost.py): the same on any host under any load. Measured latencies go
        # to the run record only.
        check("cost per text, p95 (GMACs, batch 1)", cost["gmacs_per_text"]["p95"], cfg.max_gmacs_per_text_p95,
              False),
        # One verdict: a label that changes with batch mates would be served otherwise than it was judged.
        check(f"labels changed by batches of {batching['predict_batch_size']} (share)", 1.0 - batching["agreement"],
              0.0, False),
        check(f"slices failing ({len(judged)} judged of {len(slices)})", float(sum(not s["passed"] for s in judged)),
              0.0, False),
    ]


def unsettled(checks: list[dict[str, Any]]) -> str:
    """Why the inconclusive checks are: each interval against its bound and the test rows that would settle it."""
    reasons = []
    for c in checks:
        low, high = c["interval"]
        needed = ("no number of rows settles a difference on the bound" if c["rows_needed"] is None else
                  f"about {c['rows_needed']} test rows would settle it, the test split has {c['rows']}")
        reasons.append(f"{c['check']} {c['value']:+.4f} [{low:+.4f}, {high:+.4f}] straddles {c['threshold']:g} "
                       f"({needed})")
    return "not settled: " + "; ".join(reasons)


def decide(checks: list[dict[str, Any]], comparison: dict[str, Any] | None, cfg: GateConfig) -> dict[str, Any]:
    """REJECT when a check fails or the comparison rejects; INCONCLUSIVE when a check is; else the comparison's
    outcome; with no champion, gate.first_run decides."""
    failed = [c["check"] for c in checks if c["outcome"] == CHECK_FAIL]
    if failed:
        return {"decision": REJECT, "why": f"failed: {', '.join(failed)}"}
    if comparison is not None and comparison["outcome"] == REJECT:
        return {"decision": REJECT, "why": comparison["why"]}
    open_checks = [c for c in checks if c["outcome"] == CHECK_INCONCLUSIVE]
    if open_checks:
        also = f"; against the champion: {comparison['why']}" if comparison and comparison["outcome"] != PROMOTE else ""
        return {"decision": INCONCLUSIVE, "why": unsettled(open_checks) + also}
    if comparison is not None:
        return {"decision": comparison["outcome"], "why": comparison["why"]}
    if cfg.first_run == "require_champion":
        return {"decision": INCONCLUSIVE,
                "why": "no production model to compare with (nothing in the registry's prod stage, gate.champion "
                       "null) and gate.first_run is require_champion"}
    return {"decision": PROMOTE, "why": "every check holds; no production model to compare with (nothing in the "
                                        "registry's prod stage, gate.champion null): first run, gate.first_run is "
                                        "promote_if_checks_pass"}


def calibration_figures(model: OnnxClassifier, probs: np.ndarray, y_true: np.ndarray, metrics: dict[str, Any],
                        cfg: PipelineConfig) -> dict[str, Any]:
    """The served probabilities' calibration on test: the folder's temperature (fitted on dev by quantize), the ECE
    of its probabilities (after) and of the model's own softmax (before), each with its bootstrap interval."""
    g = cfg.gate
    # softmax(log p * T) undoes the division by T (softmax ignores the per-row shift log p carries).
    raw = softmax(np.log(np.maximum(probs, np.finfo(np.float64).tiny)) * model.temperature)
    before = ece_interval(y_true, raw, g.bootstrap_samples, g.confidence, cfg.seed, g.calibration_bins)
    fitted = model.serving.get("calibration")
    return {"temperature": model.temperature, "fitted_on": fitted["fitted_on"] if fitted else None,
            "ece_before": before, "ece_after": metrics["ece"]}


def live_traffic_figures(texts: list[str], y_true: np.ndarray, predicted: np.ndarray, cfg: PipelineConfig,
                         root: Path) -> dict[str, Any] | None:
    """gate.live_traffic: the shipped model's test figures reweighted toward the prediction log's texts (reported,
    never decided on); None when gate.live_traffic.log_dir is null."""
    live = cfg.gate.live_traffic
    if live.log_dir is None:
        return None
    logged, missing = read_live_texts(root / live.log_dir, live.max_texts)
    found = accuracy_on_live_traffic(texts, y_true, predicted, logged, len(cfg.data.label_names),
                                     folds=live.folds, max_texts=live.max_texts, max_weight=live.max_weight,
                                     min_effective_rows=live.min_effective_rows,
                                     min_supported_share=live.min_supported_share,
                                     samples=cfg.gate.bootstrap_samples, confidence=cfg.gate.confidence, seed=cfg.seed)
    found.pop("per_row")  # a weight per test row: too much for decision.json
    return {**found, "log_dir": live.log_dir, **({"why": missing} if missing else {})}


def shadow_figures(model: OnnxClassifier, champion: Champion | None, cfg: PipelineConfig,
                   root: Path) -> dict[str, Any] | None:
    """The texts the champion answered in the prediction log (gate.live_traffic.log_dir) replayed with the
    candidate: disagreement per slice, both label-free accuracy estimates and their paired difference (reported,
    never decided on). None without a log or a champion; {"skipped": why} when there is nothing to replay."""
    log_dir = cfg.gate.live_traffic.log_dir
    if log_dir is None or champion is None:
        return None
    try:
        # A champion from the registry logs under its version; a champion folder's answers are the window's one
        # version (several: ShadowError names them).
        return shadow_replay(read_prediction_log(root / log_dir), model, prod_version=champion.version,
                             length_edges=cfg.gate.length_buckets, confidence=cfg.gate.confidence,
                             latency_rows=cfg.gate.latency_rows)
    except ShadowError as exc:
        return {"skipped": str(exc)}


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


def recipe_selection(paths: ArtifactPaths) -> dict[str, Any] | None:
    """tuning.json's recipe search (None when none ran), and whether the teacher and the student were trained with
    the recipe it chose: read from train's stamp and distill's record, not from params.yaml."""
    trained = dict(read_json(paths.train_stamp)["config"])
    if paths.distill_report.is_file():
        trained["distill"] = read_json(paths.distill_report).get("recipe")
    return gate_selection(read_selection(paths.selection), trained)


def card_inputs(gate_dir: Path, paths: ArtifactPaths, cfg: GateConfig) -> CardInputs:
    """What the release's model card is built from, tracked outputs only: decision.json and the release folder in
    gate_dir (the gate's output, staged or in place: the card says what those files say), train's and distill's
    records, the gate's params."""
    folder = gate_dir / "release"
    stamp, decision = read_json(paths.train_stamp), read_json(gate_dir / "decision.json")
    return CardInputs(name=ARTIFACT, decision=decision,
                      release=read_json(folder / RELEASE_FILE), serving=read_json(folder / SERVING_FILE),
                      config=read_json(folder / "config.json"), stamp=stamp,
                      long_text=read_json(paths.long_text_report),
                      # A student put beside the run by hand, not by distill, comes without distill.json.
                      distill=read_json(paths.distill_report) if paths.distill_report.is_file() else {},
                      judging=cfg.model_dump(include=CARD_PARAMS),
                      selection=decision.get("selection"))


@stage_task("gate")
def gate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Write decision.json, report.md, reliability.csv and the release folder (with its model card); never moves the
    production pointer."""
    g = cfg.gate
    champion = resolve_champion(cfg, paths)
    test = pd.read_parquet(paths.split("test"))
    texts, y_true = list(test["text"]), test["label"].to_numpy()
    model = load_served_model(paths.int8_dir)
    probs = served_probabilities(model, texts, g.batch_size)
    predicted = probs.argmax(axis=1)
    # What is served must be what is judged: the same texts in predict's (and the service's) batches. A dynamic INT8
    # model with one activation scale per call fails this; quantize ships only batch-invariant rungs.
    batched_probs = served_probabilities(model, texts, PREDICT_BATCH_SIZE)
    batched = batched_probs.argmax(axis=1)
    batching = {"judged_batch_size": g.batch_size, "predict_batch_size": PREDICT_BATCH_SIZE,
                "agreement": float((batched == predicted).mean()),
                "max_prob_delta": float(np.abs(batched_probs - probs).max()),
                "accuracy_at_predict_batch_size": float((batched == y_true).mean())}
    metrics = metric_intervals(y_true, probs, cfg.data.label_names, g.bootstrap_samples, g.confidence, cfg.seed,
                               g.calibration_bins)
    # The accuracy its calibrated probabilities expect on test: what the monitor's label-free estimate of a live
    # window is compared with (the same estimator on both sides).
    metrics["expected_accuracy"] = expected_accuracy(probs.max(axis=1), g.confidence)
    calibration = calibration_figures(model, probs, y_true, metrics, cfg)
    pytorch = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")
    if list(pytorch["text"]) != texts:
        raise RuntimeError("artifacts/evaluate/predictions.parquet does not hold the test split's rows in order: "
                           "rerun evaluate")
    quantized = read_json(paths.quantization_report)
    quantization = quantization_reference(y_true, pytorch["predicted"].to_numpy(), predicted,
                                          len(cfg.data.label_names), g, cfg.seed,
                                          shipped_bounds(cfg, quantized["chosen_model"]))
    cost = cost_record(model.read(texts), window_cost(model.folder / model.model_file, model.max_length),
                       model.max_length)
    latencies = batch1_latencies_ms(model, texts[: g.latency_rows])  # measured for the run record, never judged
    lengths = token_lengths(paths.int8_dir / "tokenizer.json", texts)
    slices = slice_report(slice_frame(test, predicted, lengths, g), [LENGTH_SLICE, *g.slice_columns], g, cfg.seed,
                          metrics["accuracy"]["value"])
    checks = absolute_checks(metrics, quantization, cost, batching, slices, g)
    keys = row_keys(texts)
    comparison = compare_with_champion(champion, test, keys, predicted, cfg) if champion else None
    shadow = shadow_figures(model, champion, cfg, paths.root)
    # Timed, so it varies run to run: to the run record, not to decision.json.
    shadow_latency = shadow.pop("latency_ms_b1", None) if shadow else None
    shipped = paths.int8_dir / MODEL_FILE
    candidate = {"model": quantized["chosen_model"], "file": str(shipped.relative_to(paths.root)),
                 "precision": quantized["chosen"], "sha256": file_sha256(shipped),
                 # The run's fingerprint, not a git SHA: the commit holding dvc.lock is made after the run, so a
                 # SHA here would differ between the reference run and every clone that repeats it.
                 "train_run": read_json(paths.train_stamp)["run_fingerprint"]}
    decision = {**decide(checks, comparison, g), "checks": checks, "metrics": metrics,
                "reference": {"pytorch": {k: read_json(paths.metrics)[k] for k in ("accuracy", "macro_f1")},
                              "quantization": quantization, "batching": batching},
                "calibration": calibration,
                "live_traffic": live_traffic_figures(texts, y_true, predicted, cfg, paths.root),
                "shadow": shadow,
                "compute_cost": cost, "slices": slices, "long_text": reading_record(model, lengths),
                "comparison": comparison,
                "first_run": g.first_run if champion is None else None, "candidate": candidate,
                "selection": recipe_selection(paths),
                "quantize": quantize_candidates(quantized)}
    with staged_dir(paths.stage_dir("gate")) as out:
        write_json(out / "decision.json", decision)
        write_text(out / "report.md", render_report(decision, g))
        pd.DataFrame(reliability_bins(probs, y_true, g.calibration_bins)).to_csv(out / "reliability.csv", index=False)
        write_release(out, paths.int8_dir, keys, {**candidate, "decision": decision["decision"],
                                                  "labels": cfg.data.label_names, "test_rows": len(keys)})
        parity = write_certificate(out / "release", model, texts, keys, lengths, g.parity_rows,
                                   g.parity_max_prob_delta)
        write_text(out / "release" / CARD_FILE, render_card(card_inputs(out, paths, g)))
        result = write_result(out, StageResult(stage="gate", key_figure=key_figure(decision),
                                               decision=decision["decision"]))
    # The certificate's judging host with its CPU model name (parity.json keeps only the numeric facts).
    write_run_record(paths, "gate", {"decision": decision["decision"], "parity_certificate": parity,
                                     "latency_ms_b1": {
        "rows": len(latencies), "p50": float(np.median(latencies)), "p95": float(np.percentile(latencies, 95))},
        # What decided instead (decision.json's cost check), beside the clock's figures.
        "cost_gmacs_per_text_p95": cost["gmacs_per_text"]["p95"], "cost_budget": g.max_gmacs_per_text_p95,
        "shadow_latency_ms_b1": shadow_latency})
    return result
