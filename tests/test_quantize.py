"""quantize: INT8 model written, compared with FP32 on test, refused when it loses too much."""

import json

import pytest

from tasks.config import parse_config
from tasks.quantize import QuantizationAccuracyError, quantize
from tests.conftest import tiny_params


def test_quantize_stage_reports_int8_against_fp32(staged_pipeline):
    _, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    assert report["int8_mb"] < report["fp32_mb"]
    assert report["accuracy_drop"] == pytest.approx(report["fp32_accuracy"] - report["int8_accuracy"])
    assert 0.0 <= report["agreement"] <= 1.0 and report["int8_latency_ms_b1"] > 0
    assert (paths.int8_dir / "model.onnx").is_file() and (paths.int8_dir / "tokenizer.json").is_file()


def test_quantize_fails_and_keeps_previous_output_when_drop_exceeds_limit(staged_pipeline, tiny_model_dir,
                                                                        monkeypatch):
    import tasks.quantize as stage

    _, paths = staged_pipeline
    before = paths.quantization_report.read_bytes()
    real_compare = stage.compare

    def lossy_compare(*args, **kwargs):
        """The real comparison, with INT8 reported 5 points below FP32."""
        report = real_compare(*args, **kwargs)
        return {**report, "int8_accuracy": report["fp32_accuracy"] - 0.05, "accuracy_drop": 0.05}

    monkeypatch.setattr(stage, "compare", lossy_compare)
    raw = tiny_params(tiny_model_dir)
    raw["quantize"]["max_accuracy_drop"] = 0.04
    with pytest.raises(QuantizationAccuracyError, match="max_accuracy_drop"):
        quantize.fn(parse_config(raw), paths)
    assert paths.quantization_report.read_bytes() == before, "a failed quantize must not touch its last output"
