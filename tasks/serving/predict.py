"""Serve a shipped folder: labels and probabilities from onnxruntime + tokenizers, no torch needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.core.config import load_config
from tasks.core.errors import TunegateError
from tasks.core.io import atomic_file, read_table
from tasks.core.metrics import softmax
from tasks.serving.files import SERVING_FILE
from tasks.serving.onnx_model import OnnxClassifier


# `--text-column` outside a project (no params.yaml to take data.text_column from).
FALLBACK_TEXT_COLUMN = "text"


class PredictInputError(TunegateError):
    """No texts to classify, a model folder that is not a served one, or an unusable input file."""


def default_text_column(project: Path) -> str:
    """data.text_column of the project's params.yaml when there is one, else `text`."""
    params = project / "params.yaml"
    return load_config(params).data.text_column if params.is_file() else FALLBACK_TEXT_COLUMN


def load_served_model(folder: Path) -> OnnxClassifier:
    if not (folder / SERVING_FILE).is_file():
        raise PredictInputError(f"{folder} is not an exported model folder (no {SERVING_FILE}): "
                                "run the pipeline first, or pass --model artifacts/export/onnx")
    return OnnxClassifier(folder)


def predict_texts(model: OnnxClassifier, texts: list[str], batch_size: int) -> pd.DataFrame:
    """One row per text: predicted label, its probability, and every class's probability."""
    probs = softmax(model.logits(texts, batch_size))
    frame = pd.DataFrame({"predicted_label": [model.labels[i] for i in probs.argmax(axis=1)],
                          "predicted_probability": probs.max(axis=1)})
    for i, name in enumerate(model.labels):
        frame[f"p_{name}"] = probs[:, i]
    return frame


def predict_file(model: OnnxClassifier, source: Path, target: Path, text_column: str, batch_size: int) -> int:
    """Classify every row of a CSV/Parquet/JSONL file; write it back with predictions (CSV or JSONL)."""
    table = read_table(source)
    if text_column not in table.columns:
        raise PredictInputError(f"{source} has no column {text_column!r} (columns: {', '.join(map(str, table.columns))})")
    texts = table[text_column].fillna("").astype(str).tolist()
    predictions = predict_texts(model, texts, batch_size)
    clashes = sorted(set(predictions.columns) & set(map(str, table.columns)))
    if clashes:
        raise PredictInputError(f"{source} already has columns {clashes}: rename them before predicting")
    result = pd.concat([table.reset_index(drop=True), predictions], axis=1)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise PredictInputError(f"output {target} must end in .csv or .jsonl")
    with atomic_file(target) as tmp:
        if suffix == ".csv":
            result.to_csv(tmp, index=False)
        else:
            result.to_json(tmp, orient="records", lines=True, force_ascii=False)
    return len(result)
