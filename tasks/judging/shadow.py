"""Shadow evaluation by replay: the texts prod answered, as its prediction log kept them, scored again by a candidate.

Each logged text is scored by the candidate one text per model call (as the service scores a request alone), and set
beside what prod answered: how often the two disagree (overall, by length in tokens and by prod's label), the accuracy
each is expected to have from its own probabilities (no labels needed; tasks/judging/estimate.py), the paired
difference of those estimates, and the candidate's batch-1 latency on the same texts.

Disagreement is measured, not estimated: it bounds how far the two accuracies can be apart on these texts whatever
the labels are. The accuracies are estimates and hold only as far as both models' probabilities are calibrated on
the live texts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import PipelineConfig
from tasks.core.errors import TunegateError
from tasks.core.metrics import softmax
from tasks.judging.estimate import estimated_difference, expected_accuracy
from tasks.judging.slices import bucket_labels, length_buckets
from tasks.judging.stats import z_value
from tasks.runtime.latency import batch1_latencies_ms
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.prediction_log import read_prediction_log

# Why a logged record is not replayed (the report counts each).
OTHER_VERSION = "other_version"  # answered by a version other than the prod version compared
NO_TEXT = "no_text"  # logged without its text (serve.log_texts off when it was scored)
LENGTH_SLICE = "length"  # tokens of the whole text, special tokens included (the gate's length buckets)
LABEL_SLICE = "prod_label"  # the label prod answered


class ShadowError(TunegateError):
    """Nothing to replay: an empty window, a log without texts, no record of the prod version, or a candidate
    whose labels are not prod's."""


def versions_with_texts(records: list[dict]) -> Counter:
    """Records holding their text, by the version that answered them."""
    return Counter(r["model_version"] for r in records if isinstance(r.get("text"), str))


def compared_version(records: list[dict], prod_version: str | None) -> str:
    """The prod version whose answers are replayed: `prod_version`, or the one version that logged texts in the
    records (several: an error naming them, since which one is prod is not the log's to say)."""
    if prod_version is not None:
        return prod_version
    found = versions_with_texts(records)
    if len(found) != 1:
        counts = ", ".join(f"{version}: {count}" for version, count in found.most_common())
        raise ShadowError(f"the window holds texts answered by {len(found)} versions ({counts}): name the prod "
                          "version to compare with")
    return next(iter(found))


def replayable(records: list[dict], prod_version: str | None) -> tuple[list[dict], str, dict[str, int]]:
    """(the records to replay, the prod version, {reason: records skipped}). ShadowError when none is left, saying
    why: no records at all, none holding its text, none of the prod version."""
    if not records:
        raise ShadowError("the prediction log holds no records in the window: widen it, or check the log folder")
    if not versions_with_texts(records):
        raise ShadowError(f"none of the {len(records)} records in the window holds its text: the service logs texts "
                          "only with serve.log_texts: true")
    version = compared_version(records, prod_version)
    kept: list[dict] = []
    skipped = {OTHER_VERSION: 0, NO_TEXT: 0}
    for record in records:
        if record["model_version"] != version:
            skipped[OTHER_VERSION] += 1
        elif not isinstance(record.get("text"), str):
            skipped[NO_TEXT] += 1
        else:
            kept.append(record)
    if not kept:
        others = ", ".join(sorted(versions_with_texts(records)))
        raise ShadowError(f"no record in the window holds a text answered by {version} (texts were logged by "
                          f"{others})")
    return kept, version, skipped


def logged_probabilities(records: list[dict], labels: list[str]) -> np.ndarray:
    """[n, classes] prod's logged probabilities in `labels` order; ShadowError when the log names other labels
    (the candidate answers another question, or the log was written without label names)."""
    logged = set(records[0]["probabilities"])
    if logged != set(labels):
        raise ShadowError(f"prod's log names the labels {sorted(logged)} and the candidate {sorted(labels)}: "
                          "a replay compares models of one label set")
    return np.asarray([[r["probabilities"][name] for name in labels] for r in records], dtype=np.float64)


def score_one_at_a_time(classifier: OnnxClassifier, texts: list[str]) -> np.ndarray:
    """[n, classes] probabilities, each text alone in its model call: the answer a request of one text gets from
    the service (tasks/serving/scoring.py at batch 1), which a dynamic INT8 model may not give inside a batch."""
    return np.vstack([softmax(classifier.logits([text], 1)) for text in texts])


def evenly_spaced(texts: list[str], rows: int | None) -> list[str]:
    """At most `rows` texts spread over the whole list (None: all), so a capped timing sees the whole window."""
    if rows is None or rows >= len(texts):
        return list(texts)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, rows).round().astype(int)]


def wilson_interval(count: int, rows: int, confidence: float) -> dict[str, float]:
    """{value, low, high}: a proportion with its Wilson score interval (sound at 0 and with few rows, where a
    bootstrap of a rare disagreement collapses to [0, 0])."""
    z = z_value(confidence)
    share = count / rows
    centre = (share + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z / (1 + z * z / rows) * np.sqrt(share * (1 - share) / rows + z * z / (4 * rows * rows))
    # At 0 (or all) rows the bound is 0 (or 1) exactly; computed, it comes out a rounding error away.
    low = 0.0 if count == 0 else max(0.0, float(centre - half))
    high = 1.0 if count == rows else min(1.0, float(centre + half))
    return {"value": share, "low": low, "high": high}


def disagreement(differs: np.ndarray, confidence: float) -> dict[str, Any]:
    """{value, low, high, count, rows}: the share of texts the candidate labels otherwise than prod did."""
    count, rows = int(differs.sum()), int(differs.size)
    return {**wilson_interval(count, rows, confidence), "count": count, "rows": rows}


def slice_masks(tokens: np.ndarray, prod_labels: np.ndarray, length_edges: list[int],
                labels: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(column, value, rows) of each slice holding rows: length buckets in edge order, then prod's labels."""
    buckets = length_buckets(tokens, length_edges)
    slices = [(LENGTH_SLICE, name, buckets == name) for name in bucket_labels(length_edges)]
    slices += [(LABEL_SLICE, name, prod_labels == name) for name in labels]
    return [(column, value, rows) for column, value, rows in slices if rows.any()]


def slice_record(column: str, value: str, prod: np.ndarray, candidate: np.ndarray, differs: np.ndarray,
                 confidence: float) -> dict[str, Any]:
    """One slice's rows, disagreement and estimated accuracies (point values; the paired difference with its
    interval)."""
    return {"column": column, "value": value, "rows": int(differs.size),
            "disagreement": disagreement(differs, confidence),
            "prod_estimated_accuracy": float(prod.max(axis=1).mean()),
            "candidate_estimated_accuracy": float(candidate.max(axis=1).mean()),
            "estimated_difference": estimated_difference(prod, candidate, confidence)}


def latency_figures(latencies_ms: np.ndarray) -> dict[str, float | int]:
    return {"rows": int(latencies_ms.size), "p50": float(np.median(latencies_ms)),
            "p95": float(np.percentile(latencies_ms, 95))}


def shadow_report(prod_probs: np.ndarray, prod_labels: list[str], candidate_probs: np.ndarray, tokens: np.ndarray,
                  labels: list[str], latencies_ms: np.ndarray, *, length_edges: list[int],
                  confidence: float) -> dict[str, Any]:
    """The replay's figures from its arrays (row i: one text): prod's logged probabilities and label, the
    candidate's probabilities ([n, classes], `labels` order), tokens per text, and the candidate's batch-1
    latencies. Estimated difference = candidate - prod."""
    answered = np.asarray(prod_labels, dtype=object)
    candidate_labels = np.asarray(labels, dtype=object)[candidate_probs.argmax(axis=1)]
    differs = candidate_labels != answered
    tokens = np.asarray(tokens)
    slices = [slice_record(column, value, prod_probs[rows], candidate_probs[rows], differs[rows], confidence)
              for column, value, rows in slice_masks(tokens, answered, length_edges, labels)]
    return {"labels": list(labels), "confidence": confidence,
            "disagreement": disagreement(differs, confidence),
            "estimated_accuracy": {"prod": expected_accuracy(prod_probs.max(axis=1), confidence),
                                   "candidate": expected_accuracy(candidate_probs.max(axis=1), confidence)},
            "estimated_difference": estimated_difference(prod_probs, candidate_probs, confidence),
            "slices": slices, "latency_ms_b1": latency_figures(np.asarray(latencies_ms, dtype=np.float64))}


@dataclass(frozen=True)
class Replayed:
    """Logged records scored again by the candidate: row i of each array is records[i]."""
    records: list[dict]  # those replayed, oldest first
    prod_version: str
    skipped: dict[str, int]  # records not replayed, by reason (OTHER_VERSION, NO_TEXT)
    read: int  # records in the window
    prod_probs: np.ndarray  # [n, classes] as logged, in the candidate's label order
    candidate_probs: np.ndarray  # [n, classes], each text alone in its model call

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.records]


def replay(records: list[dict], classifier: OnnxClassifier, prod_version: str | None) -> Replayed:
    """Score the logged texts prod (`prod_version`, or the window's one version) answered with the candidate."""
    kept, version, skipped = replayable(records, prod_version)
    prod_probs = logged_probabilities(kept, classifier.labels)
    return Replayed(kept, version, skipped, len(records), prod_probs,
                    score_one_at_a_time(classifier, [r["text"] for r in kept]))


def replay_report(replayed: Replayed, classifier: OnnxClassifier, *, length_edges: list[int], confidence: float,
                  latency_rows: int | None) -> dict[str, Any]:
    """shadow_report's figures of a replay plus the prod version and the rows replayed and skipped; the
    candidate's latency timed on at most `latency_rows` of the texts (None: all), evenly spread."""
    latencies = batch1_latencies_ms(classifier, evenly_spaced(replayed.texts, latency_rows))
    report = shadow_report(replayed.prod_probs, [r["label"] for r in replayed.records], replayed.candidate_probs,
                           np.asarray([r["tokens"] for r in replayed.records]), classifier.labels, latencies,
                           length_edges=length_edges, confidence=confidence)
    rows = {"read": replayed.read, "replayed": len(replayed.records), "skipped": replayed.skipped}
    return {"prod_version": replayed.prod_version, "rows": rows, **report}


def shadow_replay(records: list[dict], classifier: OnnxClassifier, *, prod_version: str | None,
                  length_edges: list[int], confidence: float, latency_rows: int | None) -> dict[str, Any]:
    """Replay logged records with a loaded candidate and report (replay, then replay_report)."""
    return replay_report(replay(records, classifier, prod_version), classifier, length_edges=length_edges,
                         confidence=confidence, latency_rows=latency_rows)


def shadow_evaluate(log_dir: Path, candidate: Path, cfg: PipelineConfig, *, since: float | None,
                    until: float | None, prod_version: str | None = None, threads: int | None = None,
                    candidate_version: str | None = None) -> dict[str, Any]:
    """The prediction log's records with since <= time < until (UNIX seconds; None: open) replayed with the
    served folder `candidate`, by the gate's settings: gate.length_buckets, gate.confidence, and latency timed on
    gate.latency_rows texts at most. `threads`: the candidate's onnxruntime threads (None: onnxruntime's
    default). The report (shadow_replay's) adds the window, the candidate's folder and version and the log folder."""
    records = read_prediction_log(Path(log_dir), since, until)
    classifier = OnnxClassifier(Path(candidate), threads=threads)
    report = shadow_replay(records, classifier, prod_version=prod_version, length_edges=cfg.gate.length_buckets,
                           confidence=cfg.gate.confidence, latency_rows=cfg.gate.latency_rows)
    return {"log": str(log_dir), "window": {"since": since, "until": until},
            "candidate": {"folder": str(candidate), "version": candidate_version}, **report}
