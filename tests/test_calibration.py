"""Temperature scaling: fitted on dev by quantize, written into the shipped folder's serving.json, applied by every
runtime reader of the folder (labels unchanged), and reported by the gate before and after on test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tasks.core.metrics import (TEMPERATURE_RANGE, calibration_record, expected_calibration_error, fit_temperature,
                                log_likelihood_loss, softmax)
from tasks.runtime.onnx_model import CalibrationError, OnnxClassifier, served_temperature
from tasks.runtime.predict import predict_texts


def calibrated_at(temperature: float, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): temperature is their true calibration."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 3)) * 4
    probs = softmax(logits / temperature)
    labels = (rng.random(rows)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(temperature):
    logits, labels = calibrated_at(temperature, 20_000, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.06)


def test_the_fitted_temperature_minimises_the_loss_and_lowers_the_ece():
    logits, labels = calibrated_at(2.0, 5_000, seed=2)
    fitted = fit_temperature(logits, labels)
    best = log_likelihood_loss(logits, labels, fitted)
    assert all(best <= log_likelihood_loss(logits, labels, fitted * f) for f in (0.8, 0.95, 1.05, 1.25))
    record = calibration_record(logits, labels, "dev")
    assert record["ece_after"] < record["ece_before"] / 3 and record["nll_after"] < record["nll_before"]
    assert record["fitted_on"] == {"split": "dev", "rows": 5_000} and not record["at_range_end"]
    assert record["ece_before"] == pytest.approx(expected_calibration_error(softmax(logits), labels))


def test_a_fit_beyond_the_searched_range_says_so_and_no_rows_is_an_error():
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 50)
    record = calibration_record(logits, np.array([0, 1] * 50), "dev")  # always right: wants T -> 0
    assert record["at_range_end"] and record["temperature"] == pytest.approx(TEMPERATURE_RANGE[0], rel=0.01)
    with pytest.raises(ValueError, match="no rows"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("calibration", [{"method": "platt", "temperature": 2.0}, {"method": "temperature"},
                                         {"method": "temperature", "temperature": 0}, "temperature",
                                         {"method": "temperature", "temperature": True}])
def test_a_calibration_this_version_cannot_apply_is_refused(calibration):
    with pytest.raises(CalibrationError):
        served_temperature({"calibration": calibration})


def test_a_folder_without_calibration_reads_its_own_softmax():
    assert served_temperature({}) == 1.0


def test_a_calibrated_folder_serves_tempered_probabilities_with_the_same_labels(served_folders, tmp_path):
    plain = served_folders[0]
    tempered = tmp_path / "tempered"
    shutil.copytree(plain, tempered)
    serving = json.loads((tempered / "serving.json").read_text())
    serving["calibration"] = {"method": "temperature", "temperature": 4.0}
    (tempered / "serving.json").write_text(json.dumps(serving))
    texts = ["a fine film", "dull and long", "", "x " * 40, "what a waste of an evening"]
    before, after = OnnxClassifier(plain), OnnxClassifier(tempered)
    raw, cooled = before.logits(texts, 2), after.logits(texts, 2)
    np.testing.assert_allclose(cooled, raw / 4.0, rtol=1e-6)
    a, b = predict_texts(before, texts, 2), predict_texts(after, texts, 2)
    assert list(a["predicted_label"]) == list(b["predicted_label"])
    assert (np.abs(b["predicted_probability"] - 0.5) <= np.abs(a["predicted_probability"] - 0.5) + 1e-7).all()


def test_quantize_writes_the_dev_temperature_into_the_shipped_folder(staged_pipeline):
    cfg, paths = staged_pipeline
    serving = json.loads((paths.int8_dir / "serving.json").read_text())
    report = json.loads(paths.quantization_report.read_text())
    dev = pd.read_parquet(paths.split("dev"))
    assert cfg.quantize.probabilities == "temperature"
    assert serving["calibration"] == report["probabilities"]
    assert serving["calibration"]["fitted_on"] == {"split": "dev", "rows": len(dev)}
    assert OnnxClassifier(paths.int8_dir).temperature == serving["calibration"]["temperature"] > 0


def test_the_gate_reports_calibration_before_and_after_and_the_expected_accuracy(staged_pipeline):
    cfg, paths = staged_pipeline
    decision = json.loads((paths.stage_dir("gate") / "decision.json").read_text())
    calibration, metrics = decision["calibration"], decision["metrics"]
    assert calibration["ece_after"] == metrics["ece"]
    for span in (calibration["ece_before"], calibration["ece_after"], metrics["expected_accuracy"]):
        assert span["low"] <= span["value"] <= span["high"]
    probs = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")  # the test rows, in order
    assert metrics["expected_accuracy"]["rows"] == len(probs)
    report = (paths.stage_dir("gate") / "report.md").read_text()
    assert "Probabilities are calibrated by temperature scaling" in report
    assert "accuracy its probabilities expect" in report
