"""export: ONNX with dynamic batch and sequence axes, checked against PyTorch logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.config import PipelineConfig
from tasks.io import staged_dir, write_json
from tasks.modeling import load_classifier, torch_logits
from tasks.onnx_model import MODEL_FILE, SERVING_FILE, OnnxClassifier
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, stage_task, write_result
from tasks.errors import TunegateError


class ExportParityError(TunegateError):
    """ONNX logits differ from PyTorch logits by more than export.parity_atol."""


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, logits out: the plain signature ONNX export wants."""

    def __init__(self, model: Any, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def export_onnx(model: Any, tokenizer: Any, out_dir: Path, max_length: int, opset: int) -> Path:
    """Write model.onnx (dynamic batch/sequence axes), tokenizer files, config and serving.json."""
    model = model.to("cpu").eval()
    sample = tokenizer(["a short example", "and a slightly longer second example"], padding=True,
                       return_tensors="pt")
    input_names = [name for name in tokenizer.model_input_names if name in sample]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    torch.onnx.export(
        _LogitsOnly(model, input_names),
        tuple(sample[name] for name in input_names),
        str(path),
        input_names=input_names,
        output_names=["logits"],
        dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in input_names}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,  # the TorchScript exporter: its graphs quantize cleanly on onnxruntime 1.31 and 1.32
    )
    tokenizer.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)
    write_serving_config(out_dir, tokenizer, model.config, max_length)
    return path


def write_serving_config(out_dir: Path, tokenizer: Any, config: Any, max_length: int) -> None:
    labels = [config.id2label[i] for i in range(config.num_labels)]
    write_json(out_dir / SERVING_FILE, {
        "max_length": max_length,
        "labels": labels,
        "pad_token": tokenizer.pad_token,
        "pad_id": tokenizer.pad_token_id,
    })


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and argmax agreement between two [n, classes] arrays."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_agreement": float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean()),
    }


def check_parity(report: dict[str, float], atol: float) -> None:
    if report["max_abs_diff"] > atol:
        raise ExportParityError(
            f"ONNX vs PyTorch max abs logit difference {report['max_abs_diff']:.3g} exceeds "
            f"export.parity_atol {atol:.3g} (argmax agreement {report['argmax_agreement']:.4f})"
        )


@stage_task("export", retries=1)
def export(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Export the trained model to ONNX and prove it matches PyTorch on real test texts."""
    model, tokenizer = load_classifier(paths.model_dir, torch.device("cpu"))
    texts = list(pd.read_parquet(paths.split("test"))["text"][: cfg.export.parity_rows])
    reference = torch_logits(model, tokenizer, texts, cfg.train.max_length, cfg.evaluate.batch_size,
                             torch.device("cpu"))
    with staged_dir(paths.stage_dir("export")) as out:
        onnx_dir = out / paths.onnx_dir.name
        export_onnx(model, tokenizer, onnx_dir, cfg.train.max_length, cfg.export.opset)
        report = {"rows": len(texts), "atol": cfg.export.parity_atol,
                  **parity(reference, OnnxClassifier(onnx_dir).logits(texts, cfg.evaluate.batch_size))}
        check_parity(report, cfg.export.parity_atol)
        write_json(out / "parity.json", report)
        key = f"max |Δlogit| {report['max_abs_diff']:.2e} on {len(texts)} test rows"
        return write_result(out, StageResult(stage="export", key_figure=key, **report))
