"""quantize: climb the quantization ladder of each model (the distilled student, then the teacher) and ship the
first candidate that holds the teacher FP32's accuracy."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from onnxruntime.quantization import CalibrationDataReader

from tasks.compression.rowwise import quantize_rowwise
from tasks.core.config import PipelineConfig, QuantizeConfig
from tasks.core.io import read_json, staged_dir, write_json
from tasks.core.metrics import calibration_record, classification_metrics, softmax
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.judging.stats import CHECK_PASS, paired_accuracy_se, paired_cost
from tasks.runtime.files import MODEL_FILE, SERVING_FILE
from tasks.runtime.latency import batch1_latencies_ms
from tasks.runtime.onnx_model import CPU, OnnxClassifier, copy_model, has_external_data, model_mb

CALIBRATION_BATCH = 8  # texts per calibration batch
STATIC_METHODS = {"static_minmax": "MinMax", "static_entropy": "Entropy", "static_percentile": "Percentile"}
QUANTIZED_OPS = ("MatMul", "Gemm", "Attention")
# INT8 models are CPU-serving artifacts (the dynamic rungs' MatMulInteger, QAttention and DynamicQuantizeLinear
# have no CUDA kernels): every session here, and the shipped folder, runs on CPU, so the accuracy and latency
# measured describe CPU serving on any host.
SERVING_TARGET = "cpu"


def weight_sqnr(weights: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio (dB) of symmetric per-tensor INT8: low = sensitive."""
    scale = np.abs(weights).max() / 127.0 or 1.0
    noise = weights - np.clip(np.round(weights / scale), -127, 127) * scale
    return float(10 * np.log10((weights**2).sum() / max(float((noise**2).sum()), 1e-30)))


def sensitive_nodes(model_path: Path, count: int) -> list[str]:
    """The `count` quantizable nodes whose weights lose most to INT8 (lowest SQNR)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    weights = {init.name: init for init in model.graph.initializer}
    scored = []
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            tensors = [numpy_helper.to_array(weights[name]) for name in node.input if name in weights]
            matrices = [t for t in tensors if t.ndim == 2]
            if matrices:
                scored.append((min(weight_sqnr(m) for m in matrices), node.name))
    return [name for _, name in sorted(scored)[:count]]


class _CalibrationReader(CalibrationDataReader):
    """Feeds encoded dev batches, all padded to max_length (histogram calibrators need one shape)."""

    def __init__(self, model: OnnxClassifier, texts: list[str]):
        width, pad_id = model.serving["max_length"], model.serving["pad_id"]

        def padded(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            fill = {"input_ids": pad_id}  # attention_mask and token_type_ids pad with 0
            return {k: np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=fill.get(k, 0))
                    for k, v in batch.items()}

        self._batches = iter([padded(model.encode(texts[i:i + CALIBRATION_BATCH]))
                              for i in range(0, len(texts), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def build_rung(rung: str, optimised: Path, plain: Path, target: Path, calibration: list[str],
               cfg: QuantizeConfig) -> dict[str, Any]:
    """Write the rung's model to `target`; return what was done (method, excluded nodes).

    Dynamic rungs quantize the optimised graph, whose fused Attention nodes have INT8 kernels.
    Static QDQ needs shape inference through every node, which fails on fused contrib ops,
    so static rungs quantize the plain export and leave fusion to onnxruntime at load time.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference: say "float".
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    # Row-wise INT8 rewrites MatMuls of constant weights: the plain export has all of them; the optimised graph
    # hides the Q, K, V products inside fused Attention nodes.
    source = plain if rung.startswith("static") or rung == "dynamic_per_row" else optimised
    external = has_external_data(source)
    if rung == "fp32":
        copy_model(source, target)
        return {"method": "no quantization"}
    if rung == "dynamic_per_row":
        return quantize_rowwise(source, target, external)
    if rung.startswith("dynamic"):
        per_channel = rung == "dynamic_per_channel"
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=external, extra_options=options)
        return {"method": f"dynamic INT8 weights, {'per-channel' if per_channel else 'per-tensor'}"}
    excluded = sensitive_nodes(source, cfg.sensitive_nodes) if rung == "static_sensitive_fp32" else []
    method = STATIC_METHODS.get(rung, "MinMax")
    reader = _CalibrationReader(OnnxClassifier(source.parent, model_file=source.name, target=SERVING_TARGET),
                                calibration)
    # reduce_range: 7-bit weights ([-64, 64]), as the row-wise rung's, so that AVX2's u8s8 kernel (pairs of
    # uint8 x int8 products summed in int16) never saturates: 2 x 255 x 64 = 32640 <= 32767. With 8-bit weights
    # a rung judged on a VNNI or AMX host would answer otherwise on an AVX2 host where a pair saturates.
    quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    op_types_to_quantize=["MatMul", "Gemm", "Gather"],  # compute + embeddings; not masks
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=excluded,
                    use_external_data_format=external, extra_options=options)
    return {"method": f"static QDQ INT8 (7-bit weights), {method} calibration on {len(calibration)} dev rows",
            "fp32_nodes": excluded}


TIMINGS = ("latency_ms_b1",)  # rung record fields measured with a clock


def timing_key(record: dict[str, Any]) -> str:
    """How a candidate's timings are keyed in the run record: "model:rung" (e.g. "student:dynamic_per_tensor")."""
    return f"{record['model']}:{record['rung']}"


def split_timings(rungs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rung records without their timings (for quantization.json, DVC-tracked), and the timings by "model:rung"
    (for the run record): a rerun on the same models must write the same quantization.json."""
    kept = [{k: v for k, v in rung.items() if k not in TIMINGS} for rung in rungs]
    timings = {timing_key(rung): {k: rung[k] for k in TIMINGS if k in rung} for rung in rungs}
    return kept, {key: figures for key, figures in timings.items() if figures}


def judging_rows(dev: pd.DataFrame, calibration_rows: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The dev rows that judge every rung, and a record of which: the rows after the first `calibration_rows`
    (which static calibration reads) when at least as many remain, else all dev rows."""
    # Judging on rows the calibrator saw flatters the static rungs (their activation ranges were fitted
    # there). Below as many held-out rows as calibration rows, the noise of a smaller sample (SE ~ 1/sqrt(n))
    # costs more than that bias, so every dev row judges and the record says so.
    held_out = dev.iloc[calibration_rows:]
    if len(held_out) >= calibration_rows:  # calibration_rows >= 1, so never an empty set
        return held_out.reset_index(drop=True), {"split": "dev", "rows": len(held_out), "first_row": calibration_rows,
                                                 "calibration_rows_excluded": True}
    return dev.reset_index(drop=True), {"split": "dev", "rows": len(dev), "first_row": 0,
                                        "calibration_rows_excluded": False}


@dataclass(frozen=True)
class Limits:
    """What a model's rung must hold against the teacher FP32 on dev to ship: the upper end of the paired interval of
    its accuracy drop at most max_accuracy_drop, and agreement at least min_agreement. The teacher's rungs answer to
    quantize's limits (quantization alone); the student's to distill's (distillation and quantization together)."""

    max_accuracy_drop: float
    min_agreement: float

    def record(self) -> dict[str, float]:
        return {"max_accuracy_drop": self.max_accuracy_drop, "min_agreement": self.min_agreement}


def model_limits(cfg: PipelineConfig) -> dict[str, Limits]:
    """Each model's limits: the teacher's from quantize, the student's from distill."""
    return {"teacher": Limits(cfg.quantize.max_accuracy_drop, cfg.quantize.min_agreement),
            "student": Limits(cfg.distill.max_accuracy_drop, cfg.distill.min_agreement)}


@dataclass(frozen=True)
class Reference:
    """The teacher FP32's predictions on the judging rows: every candidate of every model is judged against them."""

    predicted: np.ndarray  # [rows] class ids
    accuracy: float
    seed: int  # of the paired bootstrap: every candidate's drop is resampled on the same rows


def teacher_reference(teacher_dir: Path, rows: pd.DataFrame, labels: list[str], batch_size: int,
                      seed: int) -> Reference:
    """The exported teacher's (FP32, optimised graph) predictions and accuracy on `rows`, scored on CPU."""
    probs = softmax(OnnxClassifier(teacher_dir, target=SERVING_TARGET).logits(list(rows["text"]), batch_size))
    return Reference(probs.argmax(axis=1), classification_metrics(rows["label"].to_numpy(), probs, labels)["accuracy"],
                     seed)


def batch_invariance(model: OnnxClassifier, texts: list[str], alone: np.ndarray, size: int, tolerance: float,
                     seed: int = 0) -> dict[str, Any]:
    """How `model`'s answers change when texts share calls: `texts` scored in random (seeded) groups of `size`,
    short sentences beside long reviews, against `alone` ([n, classes] probabilities at quantize.batch_size: 1 = one
    text per call, as the gate judges). Invariant: every label the same and every probability within `tolerance`."""
    order = np.random.default_rng(seed).permutation(len(texts))
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    batched = softmax(model.reading_logits(model.read(texts), groups))
    agreement = float((batched.argmax(axis=1) == alone.argmax(axis=1)).mean())
    delta = float(np.abs(batched - alone).max())
    return {"batch_label_agreement": agreement, "batch_max_prob_delta": delta,
            "batch_invariant": bool(agreement == 1.0 and delta <= tolerance)}


def measure_rung(model: OnnxClassifier, rows: pd.DataFrame, reference: Reference, labels: list[str],
                 cfg: QuantizeConfig, limits: Limits) -> dict[str, Any]:
    """Accuracy on the judging (dev) rows, paired drop vs the teacher FP32 with its standard error, interval and
    outcome (pass / fail / inconclusive against limits.max_accuracy_drop), agreement with it, median batch-1
    latency; and whether it passes (only a drop that passes can)."""
    texts, truth = list(rows["text"]), rows["label"].to_numpy()
    probs = softmax(model.logits(texts, cfg.batch_size))
    predicted = probs.argmax(axis=1)
    accuracy = classification_metrics(truth, probs, labels)["accuracy"]
    drop = paired_cost(truth, reference.predicted, predicted, len(labels), limits.max_accuracy_drop,
                       cfg.bootstrap_samples, cfg.confidence, reference.seed)
    figures = {
        "accuracy": accuracy,
        "accuracy_drop": reference.accuracy - accuracy,
        "accuracy_drop_se": paired_accuracy_se(reference.predicted == truth, predicted == truth),
        "accuracy_drop_interval": [drop["low"], drop["high"]],
        "drop_outcome": drop["outcome"],
        "drop_rows_needed": drop["rows_needed"],  # dev rows at which the interval would stop straddling the bound
        "agreement": float((predicted == reference.predicted).mean()),
        "latency_ms_b1": float(np.median(batch1_latencies_ms(model, texts[: cfg.latency_rows]))),
        # A rung whose labels move with batch mates would serve other answers than the gate judges (one text
        # per call): it does not ship, however accurate.
        **batch_invariance(model, texts, probs, cfg.batch_check_size, cfg.max_batch_prob_delta),
    }
    figures["passed"] = bool(figures["drop_outcome"] == CHECK_PASS
                             and figures["agreement"] >= limits.min_agreement and figures["batch_invariant"])
    return figures


def model_rungs(model: str, ladder: list[str]) -> list[str]:
    """The rungs `model` climbs: the teacher the whole ladder; the student every rung but fp32 (a student FP32 is
    no faster than the teacher INT8 that follows it: params.yaml, quantize.models), unless fp32 is all there is."""
    if model == "teacher" or list(ladder) == ["fp32"]:
        return list(ladder)
    return [rung for rung in ladder if rung != "fp32"]


def weight_count(model_path: Path) -> int:
    """Weights of an FP32 ONNX graph: the elements of its float initializers (the model's parameter count)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    graph = onnx.load(str(model_path), load_external_data=False).graph  # shapes only: the weights stay on disk
    return int(sum(np.prod(init.dims, dtype=np.int64) for init in graph.initializer if init.data_type in floats))


def ceiling_record(model: str, fp32: OnnxClassifier, weights: int, rows: pd.DataFrame, reference: Reference,
                   labels: list[str], cfg: QuantizeConfig, limits: Limits) -> dict[str, Any]:
    """The model's FP32 judged like a rung, as the ceiling of its ladder (never shipped: `passed` is False): INT8
    only adds error to it, so when the FP32 itself does not pass, no rung is worth building and judging."""
    figures = measure_rung(fp32, rows, reference, labels, cfg, limits)
    return {"model": model, "rung": "fp32", "method": "no quantization: the ladder's ceiling, not a candidate",
            "ceiling": True, **figures, "ceiling_holds": figures["passed"], "passed": False,
            "mb": model_mb(fp32.folder / fp32.model_file), "params": weights}


def climb_ladder(model: str, fp32_dir: Path, work: Path, rows: pd.DataFrame, calibration: list[str],
                 labels: list[str], cfg: QuantizeConfig, reference: Reference,
                 limits: Limits) -> tuple[list[dict[str, Any]], str | None]:
    """Try `model`'s rungs in order until one passes `limits` against the teacher FP32 `reference` on `rows` (dev
    rows, never test); returns every rung tried and the passing model file in `work`, or None when none passed.
    The student's ladder (no fp32 rung) is judged at its FP32 ceiling first and not climbed when that fails.

    Each record holds what the model decides (accuracy, agreement, size, weights) and `latency_ms_b1`, a timing
    that differs run to run: split_timings takes it out before the record is written to a tracked file.
    """
    fp32 = OnnxClassifier(fp32_dir, target=SERVING_TARGET)
    # The tokenizer, config and serving files, so each candidate in `work` loads like a served folder.
    shutil.copytree(fp32_dir, work, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"), dirs_exist_ok=True)
    weights = weight_count(fp32_dir / MODEL_FILE)
    tried = []
    rungs = model_rungs(model, cfg.ladder)
    if model == "student" and "fp32" not in rungs:
        ceiling = ceiling_record(model, fp32, weights, rows, reference, labels, cfg, limits)
        tried.append(ceiling)
        if not ceiling["ceiling_holds"]:
            return tried, None
    for rung in rungs:
        target = work / f"{rung}.onnx"
        record: dict[str, Any] = {"model": model, "rung": rung}
        try:
            record.update(build_rung(rung, fp32_dir / fp32.model_file, fp32_dir / MODEL_FILE, target, calibration, cfg))
        except Exception as exc:  # noqa: BLE001 - a rung that cannot be built is a failed rung, recorded
            tried.append({**record, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        candidate = OnnxClassifier(work, model_file=target.name, target=SERVING_TARGET)
        record.update(measure_rung(candidate, rows, reference, labels, cfg, limits))
        record.update(mb=model_mb(target), params=weights)
        tried.append(record)
        if record["passed"]:
            return tried, target.name
    return tried, None


def climb_ladders(fp32_dirs: dict[str, Path], work: Path, rows: pd.DataFrame, calibration: list[str],
                  labels: list[str], cfg: QuantizeConfig, seed: int,
                  limits: dict[str, Limits]) -> tuple[list[dict[str, Any]], str, str]:
    """Climb each model's ladder in quantize.models order (fp32_dirs: the exported models there are; the teacher
    always), every rung judged against the teacher FP32 (paired intervals resampled with `seed`) within its
    model's `limits`; returns every rung tried, the first passing one's model and its file in work/<model>/."""
    reference = teacher_reference(fp32_dirs["teacher"], rows, labels, cfg.batch_size, seed)
    tried: list[dict[str, Any]] = []
    for model in cfg.models:
        if model not in fp32_dirs:
            continue
        rungs, chosen = climb_ladder(model, fp32_dirs[model], work / model, rows, calibration, labels, cfg, reference,
                                     limits[model])
        tried += rungs
        if chosen is not None:
            return tried, model, chosen
    raise RuntimeError(f"no rung of {list(cfg.ladder)} passed for {list(fp32_dirs)} (quantize.models must end with "
                       f"teacher and the ladder with fp32): {tried}")


def model_records(cfg: QuantizeConfig, paths: ArtifactPaths) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """The exported FP32 folder of each model of quantize.models, and per model its weights and FP32 size, or why
    it is skipped (a student that export did not write: distill turned off)."""
    folders = {"teacher": paths.onnx_dir, "student": paths.student_onnx_dir}
    found, records = {}, {}
    for model in cfg.models:
        folder = folders[model]
        if model == "teacher" or (folder / SERVING_FILE).is_file():  # the teacher must be there: no skip
            found[model] = folder
            records[model] = {"params": weight_count(folder / MODEL_FILE),
                              "fp32_mb": model_mb(folder / read_json(folder / SERVING_FILE)["model_file"])}
        else:
            records[model] = {"skipped": export_skip_reason(paths, model)}
    return found, records


def export_skip_reason(paths: ArtifactPaths, model: str) -> str:
    """Why export wrote no folder for `model` (its parity.json says, for a student), else where it looked."""
    parity = paths.stage_dir("export") / "parity.json"
    reason = read_json(parity).get(model, {}).get("skipped") if parity.is_file() else None
    return reason or f"no exported {model} in {paths.stage_dir('export').relative_to(paths.root)}"


def calibrate_folder(folder: Path, dev: pd.DataFrame, batch_size: int) -> dict[str, Any]:
    """Fit temperature scaling to a served folder's logits on every dev row (as the service reads them), and write it
    into its serving.json `calibration`, which OnnxClassifier applies from then on; returns the record."""
    serving = read_json(folder / SERVING_FILE)
    serving.pop("calibration", None)  # fitted on the model's own logits, never on a previous fit's
    write_json(folder / SERVING_FILE, serving)
    logits = OnnxClassifier(folder, target=SERVING_TARGET).logits(list(dev["text"]), batch_size)
    record = calibration_record(logits, dev["label"].to_numpy(), "dev")
    write_json(folder / SERVING_FILE, {**serving, "calibration": record})
    return record


@stage_task("quantize")
def quantize(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Ship the first candidate (each model of quantize.models in order, smallest first, climbing the ladder)
    within the accuracy-drop and agreement limits against the teacher FP32 on dev; record every one tried.

    Reads the dev split only: the test split is kept for the gate's verdict, so no choice is made on it.
    """
    dev = pd.read_parquet(paths.split("dev"))
    calibration = list(dev["text"][: cfg.quantize.calibration_rows])
    rows, judged_on = judging_rows(dev, cfg.quantize.calibration_rows)
    fp32_dirs, models = model_records(cfg.quantize, paths)
    with staged_dir(paths.stage_dir("quantize")) as out, tempfile.TemporaryDirectory(dir=out) as work_dir:
        work = Path(work_dir)
        limits = model_limits(cfg)
        tried, chosen_model, chosen_file = climb_ladders(fp32_dirs, work, rows, calibration, cfg.data.label_names,
                                                         cfg.quantize, cfg.seed, limits)
        int8_dir = out / paths.int8_dir.name
        # The chosen model's tokenizer, config.json and serving.json (the student's when the student ships).
        shutil.copytree(work / chosen_model, int8_dir, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
        copy_model(work / chosen_model / chosen_file, int8_dir / MODEL_FILE)
        serving = read_json(int8_dir / SERVING_FILE)
        write_json(int8_dir / SERVING_FILE, {**serving, "model_file": MODEL_FILE, "providers": [CPU]})
        # (Not the static rungs' calibration above: this one maps the chosen model's logits to probabilities.)
        temperature_fit = (calibrate_folder(int8_dir, dev, cfg.quantize.batch_size)
                           if cfg.quantize.probabilities == "temperature" else None)
        chosen = tried[-1]
        rungs, timings = split_timings(tried)
        report = {
            "chosen": chosen["rung"],
            "chosen_model": chosen_model,
            **judged_on,  # split "dev", its rows judged (all figures below are on them)
            "accuracy": chosen["accuracy"],
            "fp32_accuracy": chosen["accuracy"] + chosen["accuracy_drop"],  # the teacher FP32's
            "accuracy_drop": chosen["accuracy_drop"],
            "accuracy_drop_se": chosen["accuracy_drop_se"],
            "accuracy_drop_interval": chosen["accuracy_drop_interval"],  # quantize.confidence, paired bootstrap
            "agreement": chosen["agreement"],
            "size_ratio": round(chosen["mb"] / models["teacher"]["fp32_mb"], 4),  # of the teacher FP32
            "params_ratio": round(chosen["params"] / models["teacher"]["params"], 4),
            # The teacher's limits at the top level (quantize's); the student's (distill's) under "student".
            "thresholds": {**limits["teacher"].record(), "confidence": cfg.quantize.confidence,
                           "student": limits["student"].record()},
            "models": models,
            "rungs": rungs,  # every candidate tried, in order: model, rung, dev figures, drop outcome, size, passed
            "probabilities": temperature_fit,  # the shipped folder's temperature (serving.json), None: as_trained
        }
        write_json(out / "quantization.json", report)
        key = (f"{chosen_model} {chosen['rung']}: dev acc {chosen['accuracy']:.4f}, "
               f"drop {chosen['accuracy_drop']:+.4f} (SE {chosen['accuracy_drop_se']:.4f}) vs teacher FP32 on {judged_on['rows']} rows, "
               f"{report['size_ratio']:.2f}x its size, {len(tried)} candidate(s) tried")
        result = write_result(out, StageResult(stage="quantize", key_figure=key, chosen=chosen["rung"],
                                               chosen_model=chosen_model))
    write_run_record(paths, "quantize", {"chosen": chosen["rung"], "chosen_model": chosen_model, "timings": timings})
    return result
