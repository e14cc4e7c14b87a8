"""Serve a shipped folder: labels and probabilities from onnxruntime + tokenizers, no torch needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.core.config import load_config
from tasks.core.errors import TunegateError
from tasks.core.metrics import softmax
from tasks.runtime.files import SERVING_FILE
from tasks.runtime.onnx_model import OnnxClassifier


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
