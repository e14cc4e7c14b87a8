"""evaluate: test-set metrics of the trained model, as DVC metrics and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.config import PipelineConfig
from tasks.core.io import staged_dir, write_json
from tasks.core.metrics import (calibration_record, classification_metrics, confusion_matrix,
                                expected_calibration_error, per_class_rates, softmax)
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.judging.slices import bucket_labels, length_buckets, token_lengths
from tasks.runtime.long_text import describe
from tasks.training.modeling import load_classifier, pick_device, torch_logits
from tasks.training.reading import chosen_long_text


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """One row per test example (actual, predicted): the shape DVC's confusion template reads."""
    return pd.DataFrame({"actual": [label_names[i] for i in y_true], "predicted": [label_names[i] for i in y_pred]})


def by_length(y_true: np.ndarray, y_pred: np.ndarray, lengths: np.ndarray, edges: list[int],
              n_classes: int) -> dict[str, dict[str, float | int]]:
    """Rows, accuracy and macro-F1 per token-length bucket (gate.length_buckets edges, as the gate slices), in edge
    order; a bucket without rows is left out. Macro-F1 averages every class, as the overall figure does."""
    buckets = length_buckets(lengths, edges)
    figures = {}
    for name in bucket_labels(edges):
        rows = buckets == name
        if not rows.any():
            continue
        _, _, f1 = per_class_rates(confusion_matrix(y_true[rows], y_pred[rows], n_classes))
        figures[name] = {"rows": int(rows.sum()), "accuracy": float((y_true[rows] == y_pred[rows]).mean()),
                         "macro_f1": float(f1.mean())}
    return figures


def plot_confusion(matrix: list[list[int]], label_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.2 * len(label_names) + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > counts.max() / 2 else "black")
    ax.set_title("Test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def temperature_on_test(model, tokenizer, paths: ArtifactPaths, cfg: PipelineConfig, rule: dict, device: str,
                        test_logits: np.ndarray, y_true: np.ndarray) -> dict:
    """Temperature scaling of the trained model, fitted on dev (read by the same rule), and the test ECE it gives:
    the PyTorch side of what quantize fits for the shipped folder."""
    dev = pd.read_parquet(paths.split("dev"))
    dev_logits = torch_logits(model, tokenizer, list(dev["text"]), cfg.train.max_length, cfg.evaluate.batch_size,
                              device, long_text=rule)
    fit = calibration_record(dev_logits, dev["label"].to_numpy(), "dev")
    return {**fit, "test_ece_before": expected_calibration_error(softmax(test_logits), y_true),
            "test_ece_after": expected_calibration_error(softmax(test_logits / fit["temperature"]), y_true)}


@stage_task("evaluate")
def evaluate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Score the trained model on the test split; write metrics, predictions and the confusion matrix."""
    device = pick_device(cfg.train.device)
    model, tokenizer = load_classifier(paths.model_dir, device)
    test = pd.read_parquet(paths.split("test"))
    texts = list(test["text"])
    # Read as the shipped model will be (train's choice on dev), so every figure here describes what ships.
    rule = chosen_long_text(paths)
    logits = torch_logits(model, tokenizer, texts, cfg.train.max_length, cfg.evaluate.batch_size, device,
                          long_text=rule)
    probs = softmax(logits)
    y_true = test["label"].to_numpy()
    metrics = classification_metrics(y_true, probs, cfg.data.label_names)
    # Whole-text token counts (special tokens included), bucketed as the gate's length slices.
    lengths = token_lengths(paths.model_dir / "tokenizer.json", texts)
    metrics["by_length"] = by_length(y_true, probs.argmax(axis=1), lengths, cfg.gate.length_buckets,
                                     len(cfg.data.label_names))
    metrics["long_text"] = describe(rule)
    metrics["calibration"] = temperature_on_test(model, tokenizer, paths, cfg, rule, device, logits, y_true)
    predictions = test.assign(predicted=probs.argmax(axis=1), confidence=probs.max(axis=1))
    key = f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    with staged_dir(paths.stage_dir("evaluate")) as out:
        write_json(out / "metrics.json", metrics)
        predictions.to_parquet(out / "predictions.parquet", index=False)
        confusion_rows(y_true, predictions["predicted"].to_numpy(), cfg.data.label_names).to_csv(
            out / "confusion.csv", index=False)
        plot_confusion(metrics["confusion_matrix"], cfg.data.label_names, out / "confusion.png")
        return write_result(out, StageResult(stage="evaluate", key_figure=key, accuracy=metrics["accuracy"],
                                             macro_f1=metrics["macro_f1"]))
