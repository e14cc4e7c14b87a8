"""quantize: the ladder keeps the first rung within limits, records every rung, falls back to FP32."""

import json

import numpy as np
import pandas as pd
import pytest

import tasks.quantize as stage
from tasks.core.config import QUANTIZATION_RUNGS, ConfigError, parse_config
from tasks.serving.onnx_model import CPU, OnnxClassifier
from tests.conftest import tiny_params


def test_quantize_stage_keeps_first_rung_and_reports_it(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    assert report["chosen"] == cfg.quantize.ladder[0] == "dynamic_per_tensor"
    assert [r["rung"] for r in report["rungs"]] == ["dynamic_per_tensor"]
    assert report["size_ratio"] < 0.6
    assert report["accuracy_drop"] == pytest.approx(report["fp32_accuracy"] - report["accuracy"])
    served = OnnxClassifier(paths.int8_dir)
    assert served.model_file == "model.onnx" and served.logits(["fine"], 1).shape == (1, 2)


def test_quantization_report_keeps_timings_out_and_the_run_record_keeps_them(staged_pipeline):
    _, paths = staged_pipeline
    report = json.loads(paths.quantization_report.read_text())
    assert all("latency_ms_b1" not in rung for rung in report["rungs"]), "a timing would change the report each run"
    assert set(report["rungs"][0]) >= {"rung", "method", "accuracy", "accuracy_drop", "agreement", "passed", "mb"}
    record = json.loads(paths.run_record("quantize").read_text())
    assert record["chosen"] == report["chosen"] and record["timings"][report["chosen"]]["latency_ms_b1"] > 0
    assert "ms" not in json.loads(paths.result("quantize").read_text())["key_figure"]


def test_split_timings_takes_clock_readings_out_of_rung_records():
    rungs = [{"rung": "dynamic_per_tensor", "accuracy": 0.9, "latency_ms_b1": 3.2, "passed": False},
             {"rung": "fp32", "error": "ValueError: no", "passed": False}]
    kept, timings = stage.split_timings(rungs)
    assert kept == [{"rung": "dynamic_per_tensor", "accuracy": 0.9, "passed": False},
                    {"rung": "fp32", "error": "ValueError: no", "passed": False}]
    assert timings == {"dynamic_per_tensor": {"latency_ms_b1": 3.2}}


@pytest.mark.parametrize("rung", [r for r in QUANTIZATION_RUNGS])
def test_every_rung_builds_a_model_that_runs(staged_pipeline, tmp_path, rung):
    cfg, paths = staged_pipeline
    work = tmp_path / "work"
    test = pd.read_parquet(paths.split("test")).head(8)
    tried, chosen = stage.climb_ladder(paths.onnx_dir, work, test, list(test["text"]), cfg.data.label_names,
                                       cfg.quantize.model_copy(update={"ladder": [rung]}))
    assert tried[0]["rung"] == rung and "error" not in tried[0], tried[0]
    logits = OnnxClassifier(work, model_file=chosen).logits(["a test"], 1)
    assert np.isfinite(logits).all()


def test_ladder_falls_to_next_rung_when_a_rung_fails_its_limits(staged_pipeline, tmp_path, monkeypatch):
    cfg, paths = staged_pipeline
    real_measure = stage.measure_rung
    calls = []

    def measure_with_first_rung_broken(model, *args, **kwargs):
        figures = real_measure(model, *args, **kwargs)
        calls.append(model.model_file)
        if model.model_file == "dynamic_per_tensor.onnx":  # forced: this rung "loses" 10 points
            figures.update(accuracy_drop=0.10, passed=False)
        return figures

    monkeypatch.setattr(stage, "measure_rung", measure_with_first_rung_broken)
    test = pd.read_parquet(paths.split("test"))
    tried, chosen = stage.climb_ladder(paths.onnx_dir, tmp_path / "w", test, list(test["text"][:8]),
                                       cfg.data.label_names, cfg.quantize)
    assert [r["rung"] for r in tried] == ["dynamic_per_tensor", "dynamic_per_channel"]
    assert not tried[0]["passed"] and tried[1]["passed"] and chosen == "dynamic_per_channel.onnx"


def test_ladder_ends_at_fp32_when_no_quantized_rung_holds_accuracy(staged_pipeline, tmp_path, monkeypatch):
    cfg, paths = staged_pipeline
    real_measure = stage.measure_rung

    def only_fp32_passes(model, *args, **kwargs):
        figures = real_measure(model, *args, **kwargs)
        return {**figures, "passed": model.model_file == "fp32.onnx"}

    monkeypatch.setattr(stage, "measure_rung", only_fp32_passes)
    test = pd.read_parquet(paths.split("test"))
    quick = cfg.quantize.model_copy(update={"ladder": ["dynamic_per_tensor", "static_minmax", "fp32"]})
    tried, chosen = stage.climb_ladder(paths.onnx_dir, tmp_path / "w", test, list(test["text"][:8]),
                                       cfg.data.label_names, quick)
    assert chosen == "fp32.onnx" and [r["passed"] for r in tried] == [False, False, True]
    assert tried[-1]["accuracy_drop"] == 0.0 and tried[-1]["agreement"] == 1.0


def test_ladder_must_end_with_fp32(tiny_model_dir):
    raw = tiny_params(tiny_model_dir)
    raw["quantize"]["ladder"] = ["dynamic_per_tensor"]
    with pytest.raises(ConfigError, match="must end with fp32"):
        parse_config(raw)


def test_weight_sqnr_ranks_outlier_heavy_weights_as_sensitive():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 64))
    spiky = smooth.copy()
    spiky[0, 0] = 500.0  # one outlier stretches the scale: everything else rounds coarsely
    assert stage.weight_sqnr(spiky) < stage.weight_sqnr(smooth) - 10


def test_quantize_measures_every_rung_on_cpu_even_where_cuda_is_offered(staged_pipeline, tmp_path, gpu_host):
    """INT8 ops have no CUDA kernels: quantize's accuracy and latency must describe CPU serving on any host."""
    cfg, paths = staged_pipeline
    test = pd.read_parquet(paths.split("test")).head(8)
    stage.climb_ladder(paths.onnx_dir, tmp_path / "w", test, list(test["text"]), cfg.data.label_names,
                       cfg.quantize.model_copy(update={"ladder": ["dynamic_per_tensor", "fp32"], "latency_rows": 2}))
    assert gpu_host.sessions.requests and all(asked == [CPU] for asked in gpu_host.sessions.requests)


def test_the_shipped_quantized_folder_says_it_serves_on_cpu(staged_pipeline, gpu_host):
    _, paths = staged_pipeline
    assert json.loads((paths.int8_dir / "serving.json").read_text())["providers"] == [CPU]
    assert OnnxClassifier(paths.int8_dir).providers == [CPU] and gpu_host.sessions.requests == [[CPU]]
