"""Live performance on newly labelled rows, against the figures the gate measured for the prod release."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import DataConfig, GateConfig
from tasks.judging.stats import metric_intervals

DECISION_PATH = "artifacts/gate/decision.json"  # the gate's decision (a DVC metric: cached, readable at a commit)
PROBABILITY_PREFIX = "p_"  # a labelled frame's class probability columns: p_<label name>, as `tunegate predict`


def gate_figures(decision: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """The gate's test accuracy and macro-F1 ({value, low, high}) from its decision, with the interval settings
    (params' gate section) live intervals are computed with, so both sides are measured alike; and its expected
    accuracy on test (mean top-class probability, {value, low, high}), None in decisions written before the gate
    measured it."""
    metrics = decision["metrics"]
    expected = metrics.get("expected_accuracy")
    return {"accuracy": dict(metrics["accuracy"]), "macro_f1": dict(metrics["macro_f1"]),
            "expected_accuracy": dict(expected) if expected is not None else None,
            "rows": int(metrics["rows"]), "decision": decision.get("decision"),
            "bootstrap_samples": gate.bootstrap_samples, "confidence": gate.confidence,
            "calibration_bins": gate.calibration_bins}


def read_gate_figures(decision_path: Path, gate: GateConfig) -> dict[str, Any] | None:
    """gate_figures of a decision.json on disk; None when there is none or it holds no test metrics."""
    try:
        decision = json.loads(Path(decision_path).read_text(encoding="utf-8"))
        return gate_figures(decision, gate)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gate_figures_at(fs: Any, gate: GateConfig) -> dict[str, Any] | None:
    """gate_figures of the decision.json a DVCFileSystem (opened at the release's commit) holds; None when it
    holds none (a release promoted without the gate's metrics in the cache or remote)."""
    try:
        with fs.open(DECISION_PATH, "r") as handle:
            return gate_figures(json.loads(handle.read()), gate)
    except Exception:  # noqa: BLE001 - DVC raises many kinds for a missing file; all mean "no figures"
        return None


def labelled_frame(texts: Sequence[str], labels: Sequence[str], probabilities: np.ndarray,
                   label_names: Sequence[str]) -> pd.DataFrame:
    """What judge_window takes as `labelled`: text, true label name, and the prod model's p_<name> per class."""
    frame = pd.DataFrame({"text": list(texts), "label": list(labels)})
    for i, name in enumerate(label_names):
        frame[f"{PROBABILITY_PREFIX}{name}"] = np.asarray(probabilities, dtype=float)[:, i]
    return frame


def score_labelled(served: Any, batch: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """A labelled batch (the data's text and label columns) scored by a ServedModel one text at a time (as live
    requests are): labelled_frame's columns. Rows whose label is not in data.labels are dropped."""
    names = dict(zip(data.labels, data.label_names))
    batch = batch[batch[data.label_column].isin(list(names))]
    texts = [str(t) for t in batch[data.text_column]]
    scores = served.score(texts, 1)
    probabilities = np.array([s.probabilities for s in scores], dtype=float).reshape(len(texts), -1)
    return labelled_frame(texts, [names[v] for v in batch[data.label_column]], probabilities,
                          served.info.labels)


def live_metrics(labelled: pd.DataFrame, label_names: Sequence[str], figures: dict[str, Any],
                 seed: int) -> dict[str, Any]:
    """Accuracy and macro-F1 ({value, low, high}) of the labelled rows (true labels outside label_names are
    dropped), bootstrapped as the gate does; needs at least one usable row (ValueError otherwise)."""
    known = labelled[labelled["label"].isin(list(label_names))]
    if known.empty:
        raise ValueError(f"no labelled row has a label among {list(label_names)}")
    index = {name: i for i, name in enumerate(label_names)}
    y_true = known["label"].map(index).to_numpy(dtype=np.int64)
    probs = known[[f"{PROBABILITY_PREFIX}{name}" for name in label_names]].to_numpy(dtype=float)
    found = metric_intervals(y_true, probs, list(label_names), figures["bootstrap_samples"], figures["confidence"],
                             seed, figures["calibration_bins"])
    return {"rows": found["rows"], "accuracy": found["accuracy"], "macro_f1": found["macro_f1"]}


def drops(live: dict[str, Any], figures: dict[str, Any]) -> dict[str, float]:
    """The gate's figure minus the live one, per metric (positive: live is worse)."""
    return {f"{metric}_drop": float(figures[metric]["value"] - live[metric]["value"])
            for metric in ("accuracy", "macro_f1")}
