"""Accuracy on current traffic (tasks/judging/reweight.py): test rows reweighted toward live texts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tasks.judging import reweight
from tasks.judging.reweight import (VERDICT_NOT_COMPUTED, VERDICT_OVERLAP_TOO_SMALL, VERDICT_REWEIGHTED,
                                    accuracy_on_live_traffic, clipped_weights, effective_rows, read_live_texts,
                                    weighted_metrics)
from tasks.judging.stats import accuracy_interval

# Three topics of distinct words: a text is a few words of one topic among shared filler.
TOPICS = {
    "sport": "goal match striker keeper league referee stadium penalty coach season".split(),
    "kitchen": "recipe oven garlic butter simmer flour dough sauce pepper roast".split(),
    "space": "orbit rocket planet galaxy comet telescope astronaut nebula lunar crater".split(),
}
FILLER = "the a and of it was with this that very quite some".split()
SETTINGS = {"folds": 5, "max_texts": 2000, "max_weight": 20.0, "min_effective_rows": 50, "min_supported_share": 0.9,
            "samples": 400, "confidence": 0.95}


def topic_texts(topic: str, rows: int, rng: np.random.Generator) -> list[str]:
    """`rows` distinct-ish texts: 4 words of the topic and 4 of filler, shuffled."""
    texts = []
    for _ in range(rows):
        words = [*rng.choice(TOPICS[topic], 4), *rng.choice(FILLER, 4)]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts


def judged_rows(topic_accuracy: dict[str, float], rows_per_topic: int, seed: int = 0):
    """Test texts from each topic, binary labels, and predictions right with the topic's accuracy (exactly)."""
    rng = np.random.default_rng(seed)
    texts, y_true, y_pred, topics = [], [], [], []
    for topic, accuracy in topic_accuracy.items():
        texts += topic_texts(topic, rows_per_topic, rng)
        labels = rng.integers(0, 2, rows_per_topic)
        right = np.arange(rows_per_topic) < round(accuracy * rows_per_topic)
        y_true.append(labels)
        y_pred.append(np.where(right, labels, 1 - labels))
        topics += [topic] * rows_per_topic
    return texts, np.concatenate(y_true), np.concatenate(y_pred), np.array(topics)


def test_weights_recover_a_known_shift_toward_one_topic():
    texts, y_true, y_pred, topics = judged_rows({"sport": 0.9, "kitchen": 0.5}, 300)
    live = topic_texts("sport", 400, np.random.default_rng(1))
    found = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=0, **SETTINGS)
    assert found["verdict"] == VERDICT_REWEIGHTED
    assert found["unweighted"]["accuracy"]["value"] == pytest.approx(0.7)
    weighted = found["weighted"]["accuracy"]
    # the accuracy on the live traffic's own topic, to within a quarter of the shift: the regularised classifier's
    # probabilities are shrunk toward its prior, so the kitchen rows keep a little weight (docs/live-evidence.md)
    assert weighted["value"] == pytest.approx(0.9, abs=0.05)
    assert weighted["high"] > 0.85 and weighted["low"] > found["unweighted"]["accuracy"]["high"]
    weights = np.array(found["per_row"]["weight"])
    assert weights[topics == "kitchen"].max() < weights[topics == "sport"].min()
    # half the test rows carry the weight: about 300 effective rows, and they stand for all the live traffic
    assert 200 < found["effective_rows"] < 400 and found["live_share_supported"] > 0.9


def test_weights_follow_a_mixed_stream_in_proportion():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9, "kitchen": 0.5}, 300)
    rng = np.random.default_rng(2)
    live = topic_texts("sport", 300, rng) + topic_texts("kitchen", 100, rng)
    found = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=0, **SETTINGS)
    assert found["weighted"]["accuracy"]["value"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.5, abs=0.04)


def test_traffic_like_the_test_split_leaves_the_accuracy_as_it_was():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9, "kitchen": 0.5}, 300)
    rng = np.random.default_rng(3)
    live = topic_texts("sport", 200, rng) + topic_texts("kitchen", 200, rng)
    found = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=0, **SETTINGS)
    assert found["weighted"]["accuracy"]["value"] == pytest.approx(0.7, abs=0.02)
    assert found["domain_auc"] < 0.6 and found["effective_rows"] > 500


def test_traffic_the_test_split_never_saw_is_overlap_too_small_and_claims_nothing():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9, "kitchen": 0.5}, 300)
    live = topic_texts("space", 400, np.random.default_rng(4))
    found = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=0, **SETTINGS)
    # every test row looks equally unlike the live texts: the scaled weights stay even (many effective rows), but the
    # test rows stand for little of the live traffic
    assert found["effective_rows"] > 500 and found["live_share_supported"] < 0.5
    assert found["verdict"] == VERDICT_OVERLAP_TOO_SMALL and found["weighted"] is None
    assert "min_supported_share (0.9)" in found["why"] and "min_effective_rows" not in found["why"]
    assert found["unweighted"]["accuracy"]["value"] == pytest.approx(0.7), "the plain figure is still reported"


def test_live_traffic_on_a_few_test_rows_is_overlap_too_small():
    # live traffic all sport, which 10 of 300 test rows are: their weights hold everything, about 10 effective rows
    rng = np.random.default_rng(12)
    texts = topic_texts("sport", 10, rng) + topic_texts("kitchen", 290, rng)
    y = np.zeros(300, dtype=int)
    found = accuracy_on_live_traffic(texts, y, y, topic_texts("sport", 300, rng), 2, seed=0,
                                     **{**SETTINGS, "max_weight": 100.0, "min_supported_share": 0.01})
    assert found["effective_rows"] < 50
    assert found["verdict"] == VERDICT_OVERLAP_TOO_SMALL and found["weighted"] is None
    assert "min_effective_rows (50)" in found["why"] and "min_supported_share" not in found["why"]


def test_too_few_live_texts_is_not_computed_and_says_why():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9}, 50)
    found = accuracy_on_live_traffic(texts, y_true, y_pred, ["goal match"] * 3, 2, seed=0, **SETTINGS)
    assert found["verdict"] == VERDICT_NOT_COMPUTED and found["weighted"] is None
    assert "3 live texts" in found["why"] and "5 (folds)" in found["why"]


def test_effective_rows_is_kish_sample_size():
    assert effective_rows(np.ones(8)) == pytest.approx(8)
    assert effective_rows(np.array([5.0, 0, 0, 0])) == pytest.approx(1)
    assert effective_rows(np.array([2.0, 1, 1])) == pytest.approx(16 / 6)
    assert effective_rows(np.array([2.0, 1, 1]) * 7) == pytest.approx(16 / 6), "scale-free"


def test_weights_are_clipped_at_max_weight_then_scaled_to_mean_one():
    weights = clipped_weights(np.array([0.5, 1.0, 100.0, 3.0]), max_weight=10.0)
    assert weights == pytest.approx(np.array([0.5, 1.0, 10.0, 3.0]) / 3.625)
    assert weights.mean() == pytest.approx(1.0)


def test_clipping_caps_the_weight_of_rows_that_are_rare_in_test():
    # 10 sport rows among 290 kitchen rows, live traffic all sport: a sport row's density ratio is far above 4
    rng = np.random.default_rng(5)
    texts = topic_texts("sport", 10, rng) + topic_texts("kitchen", 290, rng)
    y = np.zeros(300, dtype=int)
    live = topic_texts("sport", 300, rng)
    capped = accuracy_on_live_traffic(texts, y, y, live, 2, seed=0, **{**SETTINGS, "max_weight": 4.0,
                                                                        "min_effective_rows": 1})
    ratio, weight = (np.array(capped["per_row"][key]) for key in ("ratio", "weight"))
    assert ratio[:10].min() > 4.0 and capped["clipped_test_rows"] == int((ratio > 4.0).sum()) >= 10
    assert weight == pytest.approx(np.minimum(ratio, 4.0) / np.minimum(ratio, 4.0).mean())
    assert capped["live_share_supported"] < 1.0, "live texts beyond the cap lie where test support is thin"


def test_a_rows_weight_never_comes_from_a_classifier_fitted_on_it(monkeypatch):
    """Every fit records the rows it saw, every prediction the rows it scored: no row is in both of one classifier's,
    and every test row is scored exactly once."""
    fits: list[dict[str, set]] = []

    class Spy:
        def __init__(self):
            from sklearn.linear_model import LogisticRegression

            self.inner = LogisticRegression(solver="liblinear")
            self.record = {"fitted": set(), "scored": set()}
            fits.append(self.record)

        def fit(self, features, side):
            self.record["fitted"] |= {row.tobytes() for row in features.toarray()}
            self.inner.fit(features, side)
            return self

        def predict_proba(self, features):
            self.record["scored"] |= {row.tobytes() for row in features.toarray()}
            return self.inner.predict_proba(features)

    monkeypatch.setattr(reweight, "domain_classifier", Spy)
    # distinct texts (a counter word each, seen twice: in its test row and its twin live text) give distinct rows
    rng = np.random.default_rng(6)
    texts = [f"{t} w{i}" for i, t in enumerate(topic_texts("sport", 60, rng) + topic_texts("kitchen", 60, rng))]
    live = [f"{t} w{i}" for i, t in enumerate(topic_texts("sport", 120, rng))]
    y = np.zeros(len(texts), dtype=int)
    found = accuracy_on_live_traffic(texts, y, y, live, 2, seed=0, **{**SETTINGS, "min_effective_rows": 1})
    assert len(fits) == SETTINGS["folds"]
    for record in fits:
        assert record["scored"] and not record["fitted"] & record["scored"]
    assert sum(len(record["scored"]) for record in fits) == len(texts) + len(live), "each row scored once"
    assert len(found["per_row"]["p_live"]) == len(texts)


def test_same_seed_same_figures_and_another_seed_other_folds():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9, "kitchen": 0.5}, 200)
    live = topic_texts("sport", 150, np.random.default_rng(7)) + topic_texts("kitchen", 50, np.random.default_rng(8))
    first = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=11, **SETTINGS)
    again = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=11, **SETTINGS)
    other = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=12, **SETTINGS)
    assert first == again
    assert first["per_row"]["p_live"] != other["per_row"]["p_live"]


def test_live_texts_beyond_max_texts_are_a_seeded_sample():
    texts, y_true, y_pred, _ = judged_rows({"sport": 0.9, "kitchen": 0.5}, 100)
    live = topic_texts("sport", 500, np.random.default_rng(9))
    found = accuracy_on_live_traffic(texts, y_true, y_pred, live, 2, seed=0, **{**SETTINGS, "max_texts": 120})
    assert found["live_texts"] == 120 and found["live_texts_given"] == 500
    assert reweight.sampled_live_texts(live, 120, 0) == reweight.sampled_live_texts(live, 120, 0)
    assert set(reweight.sampled_live_texts(live, 120, 0)) <= set(live)


def test_equal_weights_give_the_plain_accuracy_interval():
    rng = np.random.default_rng(10)
    y_true, y_pred = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    plain = weighted_metrics(y_true, y_pred, np.ones(500), 3, 300, 0.9, seed=4)["accuracy"]
    expected = accuracy_interval(y_true == y_pred, 300, 0.9, seed=4)
    assert plain == pytest.approx(expected, abs=1e-12)


def test_weighted_macro_f1_is_sklearns_with_sample_weights():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(11)
    y_true, y_pred, weights = rng.integers(0, 3, 400), rng.integers(0, 3, 400), rng.uniform(0, 5, 400)
    found = weighted_metrics(y_true, y_pred, weights, 3, 200, 0.95, seed=0)
    assert found["macro_f1"]["value"] == pytest.approx(f1_score(y_true, y_pred, average="macro",
                                                                sample_weight=weights))
    assert found["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred, sample_weight=weights))
    for span in found.values():
        assert span["low"] <= span["value"] <= span["high"]


def test_live_texts_are_read_from_a_log_the_service_wrote(tmp_path):
    from tasks.serving.predlog import PredictionLog
    from tasks.serving.scoring import TextScore

    score = TextScore(label="positive", probabilities=[0.2, 0.8], tokens=5, read_tokens=5, unknown_tokens=0)
    for folder, log_texts in ((tmp_path / "texts", True), (tmp_path / "hashes", False)):
        log = PredictionLog(folder, log_texts=log_texts, file_mb=1, max_mb=8, flush_seconds=0.05)
        log.start()
        for text in ("first", "second", "third"):
            log.append("v1", [text], [score], ["negative", "positive"])
            time.sleep(0.01)
        log.close()
    assert read_live_texts(tmp_path / "texts", max_texts=10) == (["first", "second", "third"], None)
    assert read_live_texts(tmp_path / "texts", max_texts=2) == (["second", "third"], None), "the newest"
    texts, why = read_live_texts(tmp_path / "hashes", max_texts=10)
    assert texts == [] and "serve.log_texts is off" in why and "3 records" in why
    texts, why = read_live_texts(tmp_path / "missing", max_texts=10)
    assert texts == [] and "no prediction log" in why


def test_a_partly_written_last_line_is_not_read(tmp_path):
    (tmp_path / "predictions-20260101T000000000000Z-1-000000.jsonl").write_text(
        '{"time": 1.0, "text": "whole"}\n{"time": 2.0, "text": "half')
    assert read_live_texts(tmp_path, max_texts=10) == (["whole"], None)
