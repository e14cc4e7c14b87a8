"""evaluate: metrics computed right, written as DVC metrics and a confusion plot."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks.core.metrics import classification_metrics, confusion_matrix, expected_calibration_error


def test_metrics_match_a_hand_computed_example():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[y_pred] * 0.7 + 0.1
    m = classification_metrics(y_true, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_metrics_handle_a_class_never_predicted():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["neg", "pos"])
    assert m["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_confusion_matrix_rows_are_actual():
    assert confusion_matrix(np.array([1, 1]), np.array([0, 1]), 2).tolist() == [[0, 0], [1, 1]]


def test_evaluate_stage_writes_metrics_predictions_and_plots(staged_pipeline):
    cfg, paths = staged_pipeline
    metrics = json.loads(paths.metrics.read_text())
    test = pd.read_parquet(paths.split("test"))
    predictions = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")
    assert metrics["rows"] == len(test) == len(predictions)
    assert metrics["accuracy"] == pytest.approx((predictions["predicted"] == predictions["label"]).mean())
    confusion = pd.read_csv(paths.stage_dir("evaluate") / "confusion.csv")
    assert set(confusion["actual"]) == set(cfg.data.label_names) and len(confusion) == len(test)  # both in test
    assert (paths.stage_dir("evaluate") / "confusion.png").read_bytes()[:4] == b"\x89PNG"
