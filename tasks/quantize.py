"""quantize: climb the quantization ladder and keep the fastest rung that holds accuracy."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from onnxruntime.quantization import CalibrationDataReader

from tasks.core.config import PipelineConfig, QuantizeConfig
from tasks.core.io import read_json, staged_dir, write_json
from tasks.core.metrics import classification_metrics, softmax
from tasks.judging.stats import paired_accuracy_se
from tasks.serving.files import MODEL_FILE, SERVING_FILE
from tasks.serving.latency import batch1_latencies_ms
from tasks.serving.onnx_model import CPU, OnnxClassifier, copy_model, has_external_data, model_mb
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tasks.core.stage import StageResult, stage_task, write_result

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
    source = plain if rung.startswith("static") else optimised
    external = has_external_data(source)
    if rung == "fp32":
        copy_model(source, target)
        return {"method": "no quantization"}
    if rung.startswith("dynamic"):
        per_channel = rung == "dynamic_per_channel"
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=external, extra_options=options)
        return {"method": f"dynamic INT8 weights, {'per-channel' if per_channel else 'per-tensor'}"}
    excluded = sensitive_nodes(source, cfg.sensitive_nodes) if rung == "static_sensitive_fp32" else []
    method = STATIC_METHODS.get(rung, "MinMax")
    reader = _CalibrationReader(OnnxClassifier(source.parent, model_file=source.name, target=SERVING_TARGET),
                                calibration)
    quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul", "Gemm", "Gather"],  # compute + embeddings; not masks
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=excluded,
                    use_external_data_format=external, extra_options=options)
    return {"method": f"static QDQ INT8, {method} calibration on {len(calibration)} dev rows",
            "fp32_nodes": excluded}


TIMINGS = ("latency_ms_b1",)  # rung record fields measured with a clock


def split_timings(rungs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rung records without their timings (for quantization.json, DVC-tracked), and the timings by rung
    (for the run record): a rerun on the same model must write the same quantization.json."""
    kept = [{k: v for k, v in rung.items() if k not in TIMINGS} for rung in rungs]
    timings = {rung["rung"]: {k: rung[k] for k in TIMINGS if k in rung} for rung in rungs}
    return kept, {rung: figures for rung, figures in timings.items() if figures}


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


def measure_rung(model: OnnxClassifier, rows: pd.DataFrame, fp32_pred: np.ndarray, fp32_accuracy: float,
                 labels: list[str], cfg: QuantizeConfig) -> dict[str, Any]:
    """Accuracy on the judging (dev) rows, paired drop vs FP32 with its standard error, agreement with FP32,
    median batch-1 latency; and whether it passes."""
    texts, truth = list(rows["text"]), rows["label"].to_numpy()
    probs = softmax(model.logits(texts, cfg.batch_size))
    predicted = probs.argmax(axis=1)
    accuracy = classification_metrics(truth, probs, labels)["accuracy"]
    figures = {
        "accuracy": accuracy,
        "accuracy_drop": fp32_accuracy - accuracy,
        "accuracy_drop_se": paired_accuracy_se(fp32_pred == truth, predicted == truth),
        "agreement": float((predicted == fp32_pred).mean()),
        "latency_ms_b1": float(np.median(batch1_latencies_ms(model, texts[: cfg.latency_rows]))),
    }
    figures["passed"] = bool(figures["accuracy_drop"] <= cfg.max_accuracy_drop
                             and figures["agreement"] >= cfg.min_agreement)
    return figures


def climb_ladder(fp32_dir: Path, work: Path, rows: pd.DataFrame, calibration: list[str], labels: list[str],
                 cfg: QuantizeConfig) -> tuple[list[dict[str, Any]], str]:
    """Try rungs in order until one passes on `rows` (dev rows, never test); returns every rung tried and the
    chosen model file in `work`.

    Each record holds what the model decides (accuracy, agreement, size) and `latency_ms_b1`, a timing
    that differs run to run: split_timings takes it out before the record is written to a tracked file.
    """
    fp32 = OnnxClassifier(fp32_dir, target=SERVING_TARGET)
    # The tokenizer and serving files, so each candidate in `work` loads like a served folder.
    shutil.copytree(fp32_dir, work, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"), dirs_exist_ok=True)
    fp32_probs = softmax(fp32.logits(list(rows["text"]), cfg.batch_size))
    fp32_accuracy = classification_metrics(rows["label"].to_numpy(), fp32_probs, labels)["accuracy"]
    tried = []
    for rung in cfg.ladder:
        target = work / f"{rung}.onnx"
        record: dict[str, Any] = {"rung": rung}
        try:
            record.update(build_rung(rung, fp32_dir / fp32.model_file, fp32_dir / MODEL_FILE, target, calibration, cfg))
        except Exception as exc:  # noqa: BLE001 - a rung that cannot be built is a failed rung, recorded
            tried.append({**record, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        candidate = OnnxClassifier(work, model_file=target.name, target=SERVING_TARGET)
        record.update(measure_rung(candidate, rows, fp32_probs.argmax(axis=1), fp32_accuracy, labels, cfg))
        record["mb"] = model_mb(target)
        tried.append(record)
        if record["passed"]:
            return tried, target.name
    raise RuntimeError(f"no rung of {list(cfg.ladder)} passed (the configured ladder must end with fp32): {tried}")


@stage_task("quantize")
def quantize(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Keep the first (fastest) ladder rung within the accuracy-drop and agreement limits on dev; record all tried.

    Reads the dev split only: the test split is kept for the gate's verdict, so no choice is made on it.
    """
    dev = pd.read_parquet(paths.split("dev"))
    calibration = list(dev["text"][: cfg.quantize.calibration_rows])
    rows, judged_on = judging_rows(dev, cfg.quantize.calibration_rows)
    with staged_dir(paths.stage_dir("quantize")) as out, tempfile.TemporaryDirectory(dir=out) as work_dir:
        work = Path(work_dir)
        tried, chosen_file = climb_ladder(paths.onnx_dir, work, rows, calibration, cfg.data.label_names, cfg.quantize)
        int8_dir = out / paths.int8_dir.name
        shutil.copytree(work, int8_dir, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
        copy_model(work / chosen_file, int8_dir / MODEL_FILE)
        serving = read_json(int8_dir / SERVING_FILE)
        write_json(int8_dir / SERVING_FILE, {**serving, "model_file": MODEL_FILE, "providers": [CPU]})
        chosen = tried[-1]
        rungs, timings = split_timings(tried)
        fp32_mb = model_mb(paths.onnx_dir / read_json(paths.onnx_dir / SERVING_FILE)["model_file"])
        report = {
            "chosen": chosen["rung"],
            **judged_on,  # split "dev", its rows judged (all figures below are on them)
            "accuracy": chosen["accuracy"],
            "fp32_accuracy": chosen["accuracy"] + chosen["accuracy_drop"],
            "accuracy_drop": chosen["accuracy_drop"],
            "accuracy_drop_se": chosen["accuracy_drop_se"],
            "agreement": chosen["agreement"],
            "size_ratio": round(chosen["mb"] / fp32_mb, 4),
            "thresholds": {"max_accuracy_drop": cfg.quantize.max_accuracy_drop,
                           "min_agreement": cfg.quantize.min_agreement},
            "rungs": rungs,
        }
        write_json(out / "quantization.json", report)
        key = (f"{chosen['rung']}: dev acc {chosen['accuracy']:.4f}, drop {chosen['accuracy_drop']:+.4f} "
               f"(SE {chosen['accuracy_drop_se']:.4f}) on {judged_on['rows']} rows, "
               f"{report['size_ratio']:.2f}x FP32 size, {len(tried)} rung(s) tried")
        result = write_result(out, StageResult(stage="quantize", key_figure=key, chosen=chosen["rung"]))
    write_run_record(paths, "quantize", {"chosen": chosen["rung"], "timings": timings})
    return result
