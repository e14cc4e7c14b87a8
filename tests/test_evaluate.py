"""evaluate: metrics computed right, written as DVC metrics and a confusion plot."""

import json
import shutil

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


def test_by_length_gives_rows_accuracy_and_macro_f1_per_bucket_in_edge_order_and_leaves_empty_buckets_out():
    from tasks.evaluate import by_length

    lengths = np.array([300, 10, 12, 40, 40, 40, 40])
    y_true = np.array([1, 0, 1, 0, 0, 1, 1])
    y_pred = np.array([1, 0, 0, 0, 1, 1, 1])
    figures = by_length(y_true, y_pred, lengths, [16, 32, 64, 256], n_classes=2)
    assert list(figures) == ["1-16", "33-64", ">256"], "17-32 and 65-256 hold no row"
    assert figures["1-16"] == {"rows": 2, "accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}
    # 33-64: negatives 1 right of 2, positives 2 of 2 -> F1 2/3 and 4/5
    assert figures["33-64"] == {"rows": 4, "accuracy": 0.75, "macro_f1": pytest.approx((2 / 3 + 4 / 5) / 2)}
    assert figures[">256"]["rows"] == 1 and figures[">256"]["accuracy"] == 1.0


def whole_token_lengths(model_dir, texts) -> np.ndarray:
    """Tokens per whole text with the trained model's own tokenizer, special tokens counted, nothing cut."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return np.array([len(tokenizer(t, truncation=False)["input_ids"]) for t in texts])


def test_evaluate_stage_reports_figures_per_whole_text_length_and_the_rule_it_read_by(staged_pipeline):
    from tasks.runtime.long_text import describe
    from tasks.training.reading import chosen_long_text

    cfg, paths = staged_pipeline
    metrics = json.loads(paths.metrics.read_text())
    predictions = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")
    assert metrics["long_text"] == describe(chosen_long_text(paths))
    lengths = whole_token_lengths(paths.model_dir, predictions["text"])
    by_length = metrics["by_length"]
    assert sum(b["rows"] for b in by_length.values()) == len(predictions)
    # Buckets are gate.length_buckets' (upper edges inclusive): rows past the 32-token window are counted whole.
    edges = cfg.gate.length_buckets
    beyond_window = lengths > cfg.train.max_length
    assert beyond_window.any(), "the tiny run's 32-token window cuts some test sentences"
    assert sum(b["rows"] for name, b in by_length.items() if name in ("33-64", "65-256", ">256")) == \
        beyond_window.sum()
    short = lengths <= edges[0]
    right = (predictions["predicted"] == predictions["label"]).to_numpy()
    assert by_length[f"1-{edges[0]}"]["accuracy"] == pytest.approx(right[short].mean())


@pytest.mark.heavy
def test_evaluate_reads_long_test_texts_by_the_rule_train_chose(staged_pipeline, tmp_path):
    from tasks.core.paths import ArtifactPaths
    from tasks.core.stage import load_stage

    cfg, staged = staged_pipeline
    root = tmp_path / "project"
    for stage in ("train", "prepare"):
        shutil.copytree(staged.stage_dir(stage), root / "artifacts" / stage)
    paths = ArtifactPaths(root)
    chosen = paths.stage_dir("train") / "long_text.json"
    report = json.loads(chosen.read_text())
    window = {"rule": "window", "stride": 7, "aggregate": "mean_prob"}
    chosen.write_text(json.dumps({**report, "chosen": window}))
    load_stage("evaluate").fn(cfg, paths)

    assert json.loads(paths.metrics.read_text())["long_text"] == "window(stride 7, mean_prob)"
    head = pd.read_parquet(staged.stage_dir("evaluate") / "predictions.parquet")
    windowed = pd.read_parquet(paths.stage_dir("evaluate") / "predictions.parquet")
    long = whole_token_lengths(staged.model_dir, head["text"]) > cfg.train.max_length
    # A text within one window reads the same under every rule; a longer one is read whole, window by window.
    # (The tiny random model's probabilities sit near 0.5: its differences are small, but far above float noise.)
    change = np.abs(windowed["confidence"].to_numpy() - head["confidence"].to_numpy())
    assert change[~long].max() <= 1e-6
    assert np.median(change[long]) > 1e-6 and np.median(change[long]) > 10 * change[~long].max()
