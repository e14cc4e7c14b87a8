"""The monitor's statistics and its judgement of a window: zero on identical inputs, large on shifted ones; a
drifted window raises alarms, an unshifted one does not, and a check that cannot be computed is skipped, never
passed."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import parse_config, read_params
from tasks.monitoring import drift
from tasks.monitoring.domain import domain_auc
from tasks.monitoring.judge import judge_window
from tasks.monitoring.performance import labelled_frame
from tasks.monitoring.reference import Reference
from tests.conftest import FILLER, NEGATIVE, POSITIVE, REPO

NAMES = ["negative", "positive"]
# Words of a different domain (no overlap with the keyword reviews' vocabulary).
OTHER = ("kernel driver patch compile linker register cache thread mutex socket buffer packet router firmware "
         "bootloader segfault allocator scheduler interrupt bitmap").split()


@pytest.fixture(scope="module")
def monitor_cfg():
    return parse_config(read_params(REPO / "params.yaml")).monitor


def review(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(8, 14)))
    words.insert(int(rng.integers(0, len(words))), str(rng.choice(POSITIVE if label else NEGATIVE)))
    return " ".join(words)


def shifted(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(OTHER, size=rng.integers(60, 90)))


def tokens_of(text: str) -> int:
    return len(text.split()) + 2  # a stand-in tokenizer: one token a word, plus [CLS] and [SEP]


@pytest.fixture(scope="module")
def reference() -> Reference:
    """A hand-made reference: 1,000 keyword reviews, a model ~85% sure, predicting half and half."""
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(1000)]
    texts = [review(rng, label) for label in labels]
    return Reference(version="v0.1.0", commit="0" * 40, texts=texts, labels=[NAMES[y] for y in labels],
                     tokens=np.array([tokens_of(t) for t in texts]), unknown_rate=0.0,
                     vocabulary=drift.vocabulary_of(texts), label_names=NAMES,
                     predicted_shares=np.array([0.5, 0.5]), confidences=rng.uniform(0.7, 1.0, size=1000))


def records(texts: list[str], labels: list[str], confidences: np.ndarray, *, with_text: bool = True,
            unknown: int = 0) -> list[dict]:
    """Prediction-log records (tasks.serving.predlog.make_record's fields) of scored texts."""
    found = []
    for i, (text, label, confidence) in enumerate(zip(texts, labels, confidences)):
        record = {"time": 1000.0 + i, "model_version": "v0.1.0", "text_sha256": str(i), "chars": len(text),
                  "tokens": tokens_of(text), "unknown_tokens": unknown, "label": label,
                  "confidence": float(confidence),
                  "probabilities": {n: float(confidence if n == label else 1 - confidence) for n in NAMES},
                  "truncated": False}
        if with_text:
            record["text"] = text
        found.append(record)
    return found


def unshifted_window(rows: int, seed: int, with_text: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = [NAMES[int(y)] for y in rng.integers(0, 2, size=rows)]
    texts = [review(rng, NAMES.index(label)) for label in labels]
    return records(texts, labels, rng.uniform(0.7, 1.0, size=rows), with_text=with_text)


def drifted_window(rows: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = ["negative" if rng.random() < 0.9 else "positive" for _ in range(rows)]
    return records([shifted(rng) for _ in range(rows)], labels, rng.uniform(0.5, 0.7, size=rows), unknown=3)


def judge(window, reference, cfg, **kwargs):
    options = {"labelled": None, "gate_figures": None, "seed": 0, "start": 0.0, "end": 3600.0, **kwargs}
    return judge_window(window, reference, cfg, **options)


def by_name(judgement) -> dict:
    return {c.name: c for c in judgement.checks}


# --- statistics -----------------------------------------------------------------------------------------------------

def test_psi_is_zero_for_identical_shares_and_large_when_a_class_takes_over():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert drift.psi([0.5, 0.5], [0.95, 0.05]) > 0.5
    assert np.isfinite(drift.psi([0.5, 0.5], [1.0, 0.0])), "a vanished class is floored, not infinite"


def test_psi_accepts_counts_as_well_as_shares():
    assert drift.psi([10, 10], [19, 1]) == pytest.approx(drift.psi([0.5, 0.5], [0.95, 0.05]))


def test_js_distance_runs_from_zero_for_identical_to_one_for_disjoint_shares():
    assert drift.js_distance([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0, abs=1e-7)
    assert drift.js_distance([1.0, 0.0], [0.0, 1.0]) > 0.99
    assert 0.0 < drift.js_distance([0.5, 0.5], [0.8, 0.2]) < 0.5


def test_ks_statistic_is_zero_for_one_sample_and_one_for_disjoint_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    assert drift.ks_statistic(a, a) == (0.0, 1.0)
    statistic, p_value = drift.ks_statistic(a, a + 100)
    assert statistic == 1.0 and p_value < 1e-10


def test_ks_statistic_on_tied_token_counts_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistic, _ = drift.ks_statistic([10] * 300 + [11] * 300, [10] * 290 + [12] * 310)
    assert 0 < statistic < 1


def test_oov_rate_counts_word_occurrences_missing_from_the_vocabulary_case_blind():
    vocabulary = drift.vocabulary_of(["A great film", "a dull one"])
    assert vocabulary == {"a", "great", "film", "dull", "one"}
    assert drift.oov_rate(["GREAT film"], vocabulary) == 0.0
    assert drift.oov_rate(["great kernel driver film"], vocabulary) == pytest.approx(0.5)
    assert drift.oov_rate(["", "   "], vocabulary) == 0.0


def test_unknown_rate_is_unknown_tokens_per_token():
    assert drift.unknown_rate([1, 0, 3], [10, 10, 20]) == pytest.approx(0.1)
    assert drift.unknown_rate([], []) == 0.0


def test_domain_auc_is_near_half_for_one_source_and_near_one_for_another(reference):
    same = domain_auc([r["text"] for r in unshifted_window(300, seed=1)], reference.texts, folds=5, max_texts=300,
                      seed=0)
    other = domain_auc([r["text"] for r in drifted_window(300, seed=1)], reference.texts, folds=5, max_texts=300,
                       seed=0)
    assert same is not None and other is not None
    assert abs(same[0] - 0.5) < 0.1 and same[1] >= 0
    assert other[0] > 0.95


def test_domain_auc_is_none_without_live_texts(reference):
    assert domain_auc([], reference.texts, folds=5, max_texts=300, seed=0) is None


# --- judge_window ---------------------------------------------------------------------------------------------------

def test_judge_window_alarms_on_long_texts_of_other_words(reference, monitor_cfg):
    judgement = judge(drifted_window(300, seed=2), reference, monitor_cfg)
    assert judgement.judged
    assert {"label_psi", "length_ks", "oov_rate", "domain_auc"} <= set(judgement.alarms)
    assert {"label_js", "confidence_ks", "unknown_rate"} <= set(judgement.warnings)
    checks = by_name(judgement)
    assert checks["length_ks"].value > 0.9 and "median tokens" in checks["length_ks"].evidence


def test_judge_window_passes_a_sample_of_the_same_texts(reference, monitor_cfg):
    judgement = judge(unshifted_window(300, seed=3), reference, monitor_cfg)
    assert judgement.judged and judgement.alarms == [] and judgement.warnings == []
    computed = [c for c in judgement.checks if not c.skipped]
    assert {c.name for c in computed} == {"label_psi", "label_js", "confidence_ks", "length_ks", "unknown_rate",
                                          "oov_rate", "domain_auc"}
    assert all(c.passed for c in computed)


def test_judge_window_with_too_few_texts_is_reported_not_judged(reference, monitor_cfg):
    few = drifted_window(monitor_cfg.min_window_texts - 1, seed=4)
    judgement = judge(few, reference, monitor_cfg)
    assert not judgement.judged and judgement.alarms == [] and judgement.texts == len(few)
    assert all(c.skipped and not c.passed and "min_window_texts" in c.evidence for c in judgement.checks)


def test_judge_window_skips_text_checks_when_the_log_holds_no_texts(reference, monitor_cfg):
    judgement = judge(unshifted_window(300, seed=5, with_text=False), reference, monitor_cfg)
    checks = by_name(judgement)
    for name in ("domain_auc", "oov_rate"):
        assert checks[name].skipped and not checks[name].passed and checks[name].value is None
        assert "serve.log_texts" in checks[name].evidence
    assert not checks["length_ks"].skipped, "lengths are logged without texts"


def test_judge_window_skips_performance_without_labels_and_without_gate_figures(reference, monitor_cfg):
    window = unshifted_window(300, seed=6, with_text=False)
    checks = by_name(judge(window, reference, monitor_cfg))
    assert checks["accuracy_drop"].skipped and "no labelled rows" in checks["accuracy_drop"].evidence
    labelled = labelled_frame(["great"], ["positive"], np.array([[0.1, 0.9]]), NAMES)
    checks = by_name(judge(window, reference, monitor_cfg, labelled=labelled))
    assert checks["macro_f1_drop"].skipped and "gate's test figures" in checks["macro_f1_drop"].evidence


def gate(accuracy: float) -> dict:
    span = {"value": accuracy, "low": accuracy - 0.03, "high": accuracy + 0.03}
    return {"accuracy": span, "macro_f1": dict(span), "rows": 852, "decision": "PROMOTE",
            "bootstrap_samples": 200, "confidence": 0.95, "calibration_bins": 10}


def labelled_rows(rows: int, accuracy: float, seed: int) -> pd.DataFrame:
    """Labelled rows the prod model gets right with probability `accuracy` (with texts, as a labelled batch)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, size=rows)
    predicted = np.where(rng.random(rows) < accuracy, truth, 1 - truth)
    probs = np.where(predicted[:, None] == np.arange(2), 0.9, 0.1)
    return labelled_frame([review(rng, int(y)) for y in truth], [NAMES[y] for y in truth], probs, NAMES)


def test_judge_window_alarms_when_live_accuracy_falls_below_the_gates(reference, monitor_cfg):
    window = unshifted_window(300, seed=7, with_text=False)
    worse = judge(window, reference, monitor_cfg, labelled=labelled_rows(400, 0.6, seed=1), gate_figures=gate(0.85))
    checks = by_name(worse)
    assert {"accuracy_drop", "macro_f1_drop"} <= set(worse.alarms)
    assert checks["accuracy_drop"].value == pytest.approx(0.25, abs=0.05)
    assert "labelled rows" in checks["accuracy_drop"].evidence and worse.labelled_rows == 400
    same = judge(window, reference, monitor_cfg, labelled=labelled_rows(400, 0.85, seed=1), gate_figures=gate(0.85))
    assert same.alarms == []


def test_judge_window_runs_the_domain_check_on_labelled_texts_when_the_log_has_none(reference, monitor_cfg):
    window = unshifted_window(300, seed=8, with_text=False)
    checks = by_name(judge(window, reference, monitor_cfg, labelled=labelled_rows(300, 0.85, seed=2)))
    assert not checks["domain_auc"].skipped and "labelled texts" in checks["domain_auc"].evidence


def test_window_judgement_to_dict_is_json_with_each_checks_status(reference, monitor_cfg):
    payload = json.loads(json.dumps(judge(unshifted_window(300, seed=9), reference, monitor_cfg).to_dict()))
    assert payload["version"] == "v0.1.0" and payload["served_versions"] == {"v0.1.0": 300}
    assert {c["status"] for c in payload["checks"]} == {"passed", "skipped"}


def test_judge_window_alarms_on_texts_without_words_as_another_domain(reference, monitor_cfg):
    rng = np.random.default_rng(10)
    window = records(["🦜 !!"] * 300, ["positive"] * 300, rng.uniform(0.7, 1.0, size=300))
    judgement = judge(window, reference, monitor_cfg)
    assert by_name(judgement)["domain_auc"].value > 0.95 and "domain_auc" in judgement.alarms
