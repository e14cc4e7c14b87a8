"""export: ONNX with dynamic batch and sequence axes, graph-optimised offline, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.core.config import ExportConfig, PipelineConfig
from tasks.core.errors import TunegateError
from tasks.core.io import read_json, staged_dir, write_json
from tasks.runtime.files import FP16_FILE, MODEL_FILE, OPTIMIZED_FILE, SERVING_FILE
from tasks.runtime.long_text import normalise
from tasks.training.modeling import load_classifier, torch_logits
from tasks.runtime.onnx_model import (CPU, OnnxClassifier, inference_session, load_onnx, model_mb, providers_for,
                                      save_onnx)
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.training.reading import chosen_long_text

PROTOBUF_LIMIT_MB = 2048  # a single .onnx file cannot exceed 2 GB


class ExportParityError(TunegateError):
    """An ONNX model's logits differ from PyTorch's beyond export.parity_atol, or flip a prediction."""


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, logits out: the plain signature ONNX export wants."""

    def __init__(self, model: Any, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def export_onnx(model: Any, tokenizer: Any, out_dir: Path, max_length: int, cfg: ExportConfig,
                long_text: dict[str, Any] | None = None) -> Path:
    """Write model.onnx (dynamic batch/sequence axes), tokenizer files, config and serving.json (long_text: the
    reading rule; None reads head, as a serving.json without one does)."""
    model = model.to("cpu").eval()
    sample = tokenizer(["a short example", "and a slightly longer second example"], padding=True,
                       return_tensors="pt")
    input_names = [name for name in tokenizer.model_input_names if name in sample]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    torch.onnx.export(
        # eval(): the exporter puts the module it is given back in the mode it found it in, and a new module is in
        # training mode: the caller's model would come back with dropout on.
        _LogitsOnly(model, input_names).eval(),
        tuple(sample[name] for name in input_names),
        str(path),
        input_names=input_names,
        output_names=["logits"],
        dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in input_names}, "logits": {0: "batch"}},
        opset_version=cfg.opset,
        dynamo=False,  # the TorchScript exporter: its graphs quantize cleanly on onnxruntime 1.31 and 1.32
    )
    if uses_external_data(path, cfg.external_data_mb):
        save_onnx(load_onnx(path), path, external=True)
    tokenizer.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)
    write_serving_config(out_dir, tokenizer, model.config, max_length, normalise(long_text), MODEL_FILE,
                         providers_for(cfg.target))
    return path


def uses_external_data(path: Path, threshold_mb: int) -> bool:
    """Whether weights must (or, per export.external_data_mb, should) live outside the .onnx file."""
    return model_mb(path) > min(threshold_mb, PROTOBUF_LIMIT_MB)


def write_serving_config(out_dir: Path, tokenizer: Any, config: Any, max_length: int, long_text: dict[str, Any],
                         model_file: str, providers: list[str]) -> None:
    """serving.json: the model file, tokenizer padding, labels, how texts longer than max_length are read (the
    rule train chose on dev), and the providers it is served on (export.target)."""
    labels = [config.id2label[i] for i in range(config.num_labels)]
    write_json(out_dir / SERVING_FILE, {
        "model_file": model_file,
        "max_length": max_length,
        "labels": labels,
        "pad_token": tokenizer.pad_token,
        "pad_id": tokenizer.pad_token_id,
        "providers": providers,
        "long_text": long_text,
    })


def optimise_onnx(source: Path, target: Path, config: Any, external: bool) -> dict[str, Any]:
    """Save an offline-optimised copy: onnxruntime's transformer fusions where it knows the
    architecture (Attention, EmbedLayerNormalization, BiasGelu; not SkipLayerNormalization, slow on
    CPU, see CPU_SLOW_FUSIONS), else onnxruntime's extended graph optimisations. Returns what was done."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if config.model_type in MODEL_TYPES:
        fusions = FusionOptions(config.model_type)
        fusions.enable_skip_layer_norm = False  # a CUDA session fuses it at load time, where it is fast
        optimised = optimize_model(str(source), model_type=config.model_type, num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, optimization_options=fusions)
        optimised.save_model_to_file(str(target), use_external_data_format=external)
        fused = {op: n for op, n in optimised.get_fused_operator_statistics().items() if n}
        return {"method": f"onnxruntime transformer fusions ({config.model_type})", "fused_operators": fused}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    inference_session(source, options, providers=[CPU])
    return {"method": "onnxruntime extended graph optimisation", "fused_operators": {}}


def convert_fp16(source: Path, target: Path, external: bool) -> None:
    """FP16 weights and compute for the CUDA execution provider; inputs/outputs stay int64/float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    save_onnx(convert_float_to_float16(load_onnx(source), keep_io_types=True), target, external)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and argmax agreement between two [n, classes] arrays."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_agreement": float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean()),
    }


def fp16_parity_report(reference: np.ndarray, candidate: np.ndarray, atol: float) -> dict[str, Any]:
    """FP16 parity: max abs difference, and argmax agreement on the decisive rows (FP32 top-2 margin above
    `atol`); rows closer than that may flip by FP16 rounding alone, so they are counted, not judged."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > atol
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "atol": atol,
        "decisive_rows": int(decisive.sum()),
        "decisive_agreement": float(agree[decisive].mean()) if decisive.any() else 1.0,
        "close_rows": int((~decisive).sum()),
        "close_rows_flipped": int((~agree[~decisive]).sum()),
    }


def check_fp16_parity(name: str, report: dict[str, Any]) -> None:
    if report["max_abs_diff"] > report["atol"] or report["decisive_agreement"] < 1.0:
        raise ExportParityError(
            f"{name}: max abs logit difference vs PyTorch {report['max_abs_diff']:.3g} (export.fp16_atol "
            f"{report['atol']:.3g}), argmax agreement {report['decisive_agreement']:.4f} on the "
            f"{report['decisive_rows']} rows whose top-2 margin exceeds it (must be 1)"
        )


def check_parity(name: str, report: dict[str, float], atol: float) -> None:
    if report["max_abs_diff"] > atol or report["argmax_agreement"] < 1.0:
        raise ExportParityError(
            f"{name}: max abs logit difference vs PyTorch {report['max_abs_diff']:.3g} "
            f"(export.parity_atol {atol:.3g}), argmax agreement {report['argmax_agreement']:.4f} (must be 1)"
        )


@stage_task("export")
def export(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Export the trained model, and the distilled student when there is one, to ONNX, optimise them offline and
    prove every graph matches its own PyTorch model on test texts."""
    texts = list(pd.read_parquet(paths.split("test"))["text"][: cfg.export.parity_rows])
    long_text = chosen_long_text(paths)  # the student is served by the teacher's rule: one reading per run
    with staged_dir(paths.stage_dir("export")) as out:
        report: dict[str, Any] = {"rows": len(texts), "atol": cfg.export.parity_atol, "opset": cfg.export.opset,
                                  **export_model(paths.model_dir, out / paths.onnx_dir.name, texts, long_text, cfg)}
        if paths.student_dir.is_dir():
            report["student"] = export_model(paths.student_dir, out / paths.student_onnx_dir.name, texts, long_text,
                                             cfg)
        else:
            report["student"] = {"skipped": student_absence(paths)}
        write_json(out / "parity.json", report)
        exported = [report, *([report["student"]] if "models" in report["student"] else [])]
        worst = max(m["max_abs_diff"] for record in exported for m in record["models"].values())
        key = (f"max |Δlogit| {worst:.2e} on {len(texts)} test rows, "
               f"{len(report['optimisation']['fused_operators'])} fusion kinds, "
               f"{'student exported too' if len(exported) == 2 else 'no student'}")
        return write_result(out, StageResult(stage="export", key_figure=key, max_abs_diff=worst))


def export_model(model_dir: Path, onnx_dir: Path, texts: list[str], long_text: dict[str, Any],
                 cfg: PipelineConfig) -> dict[str, Any]:
    """Export one fine-tuned model folder into `onnx_dir` (raw, optimised and, for export.target cuda, FP16 graphs)
    and check each against that model's PyTorch logits (ExportParityError); returns its parity record."""
    # Eager attention traces to the plain MatMul/Softmax pattern onnxruntime fuses into Attention.
    model, tokenizer = load_classifier(model_dir, torch.device("cpu"), attn_implementation="eager")
    # Parity under the shipped reading: the ONNX models read serving.json's rule, PyTorch reads the same.
    reference = torch_logits(model, tokenizer, texts, cfg.train.max_length, cfg.evaluate.batch_size,
                             torch.device("cpu"), long_text=long_text)
    raw = export_onnx(model, tokenizer, onnx_dir, cfg.train.max_length, cfg.export, long_text)
    external = uses_external_data(raw, cfg.export.external_data_mb)
    report: dict[str, Any] = {"external_data": external,
                              "optimisation": optimise_onnx(raw, onnx_dir / OPTIMIZED_FILE, model.config, external),
                              "models": fp32_parity(onnx_dir, texts, reference, cfg)}
    write_serving_config(onnx_dir, tokenizer, model.config, cfg.train.max_length, long_text, OPTIMIZED_FILE,
                         providers_for(cfg.export.target))
    if cfg.export.target == "cuda":
        convert_fp16(onnx_dir / OPTIMIZED_FILE, onnx_dir / FP16_FILE, external)
        report["fp16"] = fp16_parity(onnx_dir, texts, reference, cfg)
    return report


def student_absence(paths: ArtifactPaths) -> str:
    """Why there is no student to export: distill turned off, or no distill output at all."""
    record = paths.stage_dir("distill") / "distill.json"
    if record.is_file() and read_json(record).get("enabled") is False:
        return "distill.enabled is false: no student was built"
    return f"no student folder at {paths.student_dir.relative_to(paths.root)} (the distill stage wrote none)"


def fp32_parity(onnx_dir: Path, texts: list[str], reference: np.ndarray, cfg: PipelineConfig) -> dict[str, Any]:
    """Parity of the raw and optimised FP32 graphs on the provider export.target names (cuda: required, TF32
    off; cpu: CPU only, whatever onnxruntime offers). Each record names the providers the session got."""
    models: dict[str, Any] = {}
    for name in (MODEL_FILE, OPTIMIZED_FILE):
        onnx_model = OnnxClassifier(onnx_dir, model_file=name, target=cfg.export.target)
        models[name] = parity(reference, onnx_model.logits(texts, cfg.evaluate.batch_size))
        check_parity(name, models[name], cfg.export.parity_atol)
        models[name]["providers"] = onnx_model.providers
    return models


def fp16_parity(onnx_dir: Path, texts: list[str], reference: np.ndarray, cfg: PipelineConfig) -> dict[str, Any]:
    """Parity of the FP16 model on the CUDA provider, which the session must have got (else CudaProviderError)."""
    onnx_model = OnnxClassifier(onnx_dir, model_file=FP16_FILE, target="cuda")
    report = fp16_parity_report(reference, onnx_model.logits(texts, cfg.evaluate.batch_size), cfg.export.fp16_atol)
    check_fp16_parity(FP16_FILE, report)
    return {**report, "providers": onnx_model.providers}
