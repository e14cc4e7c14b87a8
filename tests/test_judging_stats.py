"""The gate's statistics: bootstrap intervals, paired differences, McNemar's exact test, the rows a margin needs."""

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, mannwhitneyu

from tasks.core.metrics import (calibration_bin, classification_metrics, confusion_matrix,
                                expected_calibration_error, reliability_bins, roc_auc)
from tasks.judging.stats import (CHECK_FAIL, CHECK_INCONCLUSIVE, CHECK_PASS, cost_outcome, ece_interval, mcnemar_exact,
                                 metric_intervals, paired_accuracy_se, paired_cost, paired_difference,
                                 resampled_confusions, resampled_ece, resampled_rows, rows_to_resolve)
from tests.test_gate import constructed_pair

PROPERTY = settings(max_examples=50, deadline=None)
SAMPLES = 200  # resamples in the property tests: enough to exercise every code path, fast on small arrays


def labelled_probs(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are right more often than not."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes))
    logits[np.arange(rows), y_true] += 1.0
    probs = np.exp(logits)
    return y_true, probs / probs.sum(axis=1, keepdims=True)


@st.composite
def predictions(draw, min_rows: int = 1, max_rows: int = 40):
    """(y_true, probs, classes): a small labelled set with arbitrary (possibly tied) probabilities."""
    classes = draw(st.integers(2, 3))
    rows = draw(st.integers(min_rows, max_rows))
    y_true = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows)))
    weights = draw(st.lists(st.lists(st.integers(0, 4), min_size=classes, max_size=classes),
                            min_size=rows, max_size=rows))
    probs = np.array(weights, dtype=float) + 0.5  # coarse values: ties in scores and in confidence bins happen
    return y_true, probs / probs.sum(axis=1, keepdims=True), classes


@st.composite
def paired_predictions(draw):
    """(y_true, pred_a, pred_b, classes) on the same rows."""
    classes = draw(st.integers(2, 3))
    rows = draw(st.integers(1, 40))
    labels = st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows)
    return np.array(draw(labels)), np.array(draw(labels)), np.array(draw(labels)), classes


def spans(result: dict) -> list[tuple[str, dict]]:
    """Every {value, low, high} in a metric_intervals result, named."""
    found = [(name, result[name]) for name in ("accuracy", "macro_f1", "ece")]
    found += [(f"{label} {part}", figures[part]) for label, figures in result["per_class"].items()
              for part in ("precision", "recall", "f1")]
    return found + ([("roc_auc", result["roc_auc"])] if result["roc_auc"] is not None else [])


# ---- metrics.py: ROC-AUC, reliability bins, ECE ----

def test_roc_auc_matches_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.1, 0.8])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.9])) == 0.0


def test_roc_auc_counts_tied_scores_as_half_a_pair():
    # Pairs (positive, negative): (0.5, 0.5) tied = 1/2, the other three ranked right: 3.5 / 4.
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_roc_auc_is_nan_with_one_class_present():
    assert np.isnan(roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])))


@PROPERTY
@given(predictions(min_rows=2))
def test_roc_auc_equals_scipys_mann_whitney_u_over_pairs(data):
    y_true, probs, _ = data
    binary, scores = (y_true == 1).astype(int), probs[:, 1]
    positives, negatives = scores[binary == 1], scores[binary == 0]
    if len(positives) == 0 or len(negatives) == 0:
        assert np.isnan(roc_auc(binary, scores))
    else:
        u = mannwhitneyu(positives, negatives).statistic
        assert roc_auc(binary, scores) == pytest.approx(u / (len(positives) * len(negatives)))


def test_reliability_bins_count_every_row_once_and_give_the_ece():
    y_true, probs = labelled_probs(300, 3, seed=4)
    table = reliability_bins(probs, y_true, 10)
    assert sum(b["rows"] for b in table) == 300
    assert all(b["bin_low"] <= b["confidence"] <= b["bin_high"] and 0 <= b["accuracy"] <= 1 for b in table)
    by_hand = sum(b["rows"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in table)
    assert expected_calibration_error(probs, y_true, 10) == pytest.approx(by_hand)


def test_reliability_bins_put_certain_predictions_in_the_top_bin():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.55, 0.45]])
    assert reliability_bins(probs, np.array([0, 0, 0]), 4) == [
        {"bin_low": 0.5, "bin_high": 0.75, "confidence": 0.55, "accuracy": 1.0, "rows": 1},
        {"bin_low": 0.75, "bin_high": 1.0, "confidence": 1.0, "accuracy": 0.5, "rows": 2}]


def test_classification_metrics_ece_follows_the_bins_it_is_given():
    y_true, probs = labelled_probs(200, 2, seed=5)
    assert classification_metrics(y_true, probs, ["a", "b"], 4)["ece"] == expected_calibration_error(probs, y_true, 4)
    assert classification_metrics(y_true, probs, ["a", "b"])["ece"] == expected_calibration_error(probs, y_true)


# ---- stats.py: the per-resample counts agree with the point metrics ----

def test_resampled_confusions_of_the_unresampled_rows_are_the_confusion_matrix():
    y_true, probs = labelled_probs(100, 3, seed=6)
    y_pred = probs.argmax(axis=1)
    every_row = np.arange(100)[None, :]
    resampled = resampled_confusions(every_row, y_true, y_pred, 3)
    assert resampled[0].tolist() == confusion_matrix(y_true, y_pred, 3).tolist()


def test_resampled_ece_of_the_unresampled_rows_is_the_ece():
    y_true, probs = labelled_probs(100, 2, seed=7)
    gap = (probs.argmax(axis=1) == y_true) - probs.max(axis=1)
    ece = resampled_ece(np.arange(100)[None, :], gap, calibration_bin(probs.max(axis=1), 10), 10)
    assert ece[0] == pytest.approx(expected_calibration_error(probs, y_true, 10))


# ---- metric_intervals ----

@pytest.mark.parametrize("classes", [2, 3])
def test_metric_intervals_point_values_are_classification_metrics(classes):
    y_true, probs = labelled_probs(250, classes, seed=classes)
    names = [f"c{i}" for i in range(classes)]
    result = metric_intervals(y_true, probs, names, 300, 0.95, seed=1, bins=8)
    expected = classification_metrics(y_true, probs, names, 8)
    assert result["rows"] == 250
    assert {k: result[k]["value"] for k in ("accuracy", "macro_f1", "ece")} == \
        {k: expected[k] for k in ("accuracy", "macro_f1", "ece")}
    assert {name: {part: figures[part] if part == "support" else figures[part]["value"] for part in figures}
            for name, figures in result["per_class"].items()} == expected["per_class"]


def test_metric_intervals_give_roc_auc_for_two_classes_only():
    y_true, probs = labelled_probs(120, 2, seed=8)
    binary = metric_intervals(y_true, probs, ["neg", "pos"], 300, 0.95, seed=1, bins=10)
    assert binary["roc_auc"]["value"] == roc_auc(y_true, probs[:, 1])
    assert binary["roc_auc"]["low"] < binary["roc_auc"]["value"] < binary["roc_auc"]["high"]
    y_true, probs = labelled_probs(120, 3, seed=8)
    assert metric_intervals(y_true, probs, ["a", "b", "c"], 300, 0.95, seed=1, bins=10)["roc_auc"] is None


def test_metric_intervals_give_no_roc_auc_when_one_class_is_absent():
    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    assert metric_intervals(np.array([1, 1, 1]), probs, ["neg", "pos"], 300, 0.95, seed=1, bins=10)["roc_auc"] is None


def test_metric_intervals_score_a_class_missing_from_a_resample_as_zero():
    # 19 rows of class a, 1 of b, all predicted right: about a third of the resamples miss the b row, and score
    # its recall 0 there (as classification_metrics does for a class with no rows), the rest 1.
    y_true = np.array([0] * 19 + [1])
    result = metric_intervals(y_true, np.eye(2)[y_true], ["a", "b"], 1000, 0.95, seed=3, bins=10)
    assert result["per_class"]["b"]["recall"] == {"value": 1.0, "low": 0.0, "high": 1.0}


def test_metric_intervals_with_another_seed_draw_other_resamples():
    y_true, probs = labelled_probs(200, 2, seed=9)
    first = metric_intervals(y_true, probs, ["a", "b"], 300, 0.95, seed=1, bins=10)
    second = metric_intervals(y_true, probs, ["a", "b"], 300, 0.95, seed=2, bins=10)
    assert first["accuracy"]["value"] == second["accuracy"]["value"]
    assert first != second


@PROPERTY
@given(predictions(), st.integers(0, 2**32 - 1))
def test_metric_intervals_are_ordered_bounded_and_repeatable(data, seed):
    y_true, probs, classes = data
    names = [f"c{i}" for i in range(classes)]
    result = metric_intervals(y_true, probs, names, SAMPLES, 0.9, seed, bins=5)
    for name, span in spans(result):
        assert 0.0 <= span["low"] <= span["high"] <= 1.0, name
        assert 0.0 <= span["value"] <= 1.0, name
    assert metric_intervals(y_true, probs, names, SAMPLES, 0.9, seed, bins=5) == result


# ---- paired_difference ----

@PROPERTY
@given(paired_predictions(), st.integers(0, 2**32 - 1))
def test_paired_difference_swapping_the_models_negates_it(data, seed):
    y_true, pred_a, pred_b, classes = data
    ab = paired_difference(y_true, pred_a, pred_b, classes, SAMPLES, 0.95, seed)
    ba = paired_difference(y_true, pred_b, pred_a, classes, SAMPLES, 0.95, seed)
    for metric in ("accuracy", "macro_f1"):
        assert ab[metric]["value"] == -ba[metric]["value"]
        assert ab[metric]["low"] == pytest.approx(-ba[metric]["high"], abs=1e-12)
        assert ab[metric]["high"] == pytest.approx(-ba[metric]["low"], abs=1e-12)
        assert ab[metric]["se"] == pytest.approx(ba[metric]["se"], abs=1e-12)
        assert -1.0 <= ab[metric]["low"] <= ab[metric]["high"] <= 1.0


@PROPERTY
@given(paired_predictions(), st.integers(0, 2**32 - 1))
def test_paired_difference_of_identical_predictions_is_exactly_zero(data, seed):
    y_true, pred_a, _, classes = data
    same = paired_difference(y_true, pred_a, pred_a.copy(), classes, SAMPLES, 0.95, seed)
    assert same == {metric: {"value": 0.0, "low": 0.0, "high": 0.0, "se": 0.0} for metric in ("accuracy", "macro_f1")}


def test_paired_difference_point_values_are_the_metric_differences():
    y_true, probs = labelled_probs(300, 3, seed=10)
    pred_a, pred_b = probs.argmax(axis=1), np.random.default_rng(0).integers(0, 3, 300)
    names = ["a", "b", "c"]
    a, b = (classification_metrics(y_true, np.eye(3)[p], names) for p in (pred_a, pred_b))
    result = paired_difference(y_true, pred_a, pred_b, 3, 300, 0.95, seed=1)
    assert result["accuracy"]["value"] == pytest.approx(a["accuracy"] - b["accuracy"])
    assert result["macro_f1"]["value"] == pytest.approx(a["macro_f1"] - b["macro_f1"])
    assert result["accuracy"]["low"] < result["accuracy"]["value"] < result["accuracy"]["high"]


# ---- paired_accuracy_se ----

def test_paired_accuracy_se_by_hand():
    # One row each gets alone: p_disc = 0.5, d = 0, so sqrt(0.5 / 4).
    assert paired_accuracy_se(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(np.sqrt(0.5 / 4))
    assert paired_accuracy_se(np.array([1, 0, 1]), np.array([1, 0, 1])) == 0.0


def test_paired_accuracy_se_agrees_with_the_bootstrap_spread_of_the_difference():
    rng = np.random.default_rng(11)
    a_correct = rng.random(400) < 0.85
    b_correct = np.where(rng.random(400) < 0.1, ~a_correct, a_correct)  # ~10% of rows disagree
    se = paired_accuracy_se(a_correct, b_correct)
    differences = np.concatenate([(a_correct[idx].astype(int) - b_correct[idx]).mean(axis=1)
                                  for idx in resampled_rows(400, 4000, seed=1)])
    assert differences.std() == pytest.approx(se, rel=0.1)
    # ... and the paired bootstrap interval of paired_difference is about z * se either side.
    y_true = np.zeros(400, dtype=int)
    result = paired_difference(y_true, np.where(a_correct, 0, 1), np.where(b_correct, 0, 1), 2, 4000, 0.95, seed=1)
    assert result["accuracy"]["se"] == se
    half_width = (result["accuracy"]["high"] - result["accuracy"]["low"]) / 2
    assert half_width == pytest.approx(NormalDist().inv_cdf(0.975) * se, rel=0.15)


# ---- mcnemar_exact ----

def test_mcnemar_counts_the_rows_each_model_alone_gets_right():
    a_correct = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    b_correct = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    result = mcnemar_exact(a_correct, b_correct)
    assert (result["a_only"], result["b_only"]) == (2, 1)
    assert result["p_value"] == pytest.approx(1.0)


def test_mcnemar_of_a_lopsided_table_is_significant():
    a_correct = np.array([True] * 20 + [True] * 30)
    b_correct = np.array([False] * 20 + [True] * 30)
    result = mcnemar_exact(a_correct, b_correct)
    assert (result["a_only"], result["b_only"]) == (20, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5 ** 20)
    assert result["p_value"] < 1e-5


def test_mcnemar_of_models_that_never_disagree_is_one():
    assert mcnemar_exact(np.array([1, 0], dtype=bool), np.array([1, 0], dtype=bool)) == \
        {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert mcnemar_exact(np.array([], dtype=bool), np.array([], dtype=bool))["p_value"] == 1.0


@PROPERTY
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=200))
def test_mcnemar_is_symmetric_bounded_and_agrees_with_scipy(pairs):
    a_correct = np.array([a for a, _ in pairs], dtype=bool)
    b_correct = np.array([b for _, b in pairs], dtype=bool)
    ab, ba = mcnemar_exact(a_correct, b_correct), mcnemar_exact(b_correct, a_correct)
    assert (ba["a_only"], ba["b_only"], ba["p_value"]) == (ab["b_only"], ab["a_only"], ab["p_value"])
    assert 0.0 <= ab["p_value"] <= 1.0
    if ab["a_only"] == ab["b_only"]:
        assert ab["p_value"] == 1.0
    if ab["a_only"] + ab["b_only"]:
        expected = binomtest(ab["a_only"], ab["a_only"] + ab["b_only"], 0.5).pvalue
        assert ab["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)


# ---- rows_to_resolve ----

def test_rows_to_resolve_the_default_runs_margin():
    # The default run: 852 test rows, ~2.7% disagreeing, no difference; a one-point margin at 95%
    # needs 1.96^2 * 0.027 / 0.01^2 = 1037.2 rows: more than the split holds.
    assert rows_to_resolve(0.027, 0.0, 0.01, 0.95) == 1038


def test_rows_to_resolve_edge_cases():
    assert rows_to_resolve(0.0, 0.0, 0.01, 0.95) == 0  # models that never disagree: nothing to resolve
    assert rows_to_resolve(1.0, 1.0, 0.01, 0.95) == 0  # a right on every row, b on none: no variance either
    assert rows_to_resolve(0.1, 0.0, 0.0, 0.95) is None  # a zero margin is never resolved


def _rows_or_infinity(disagreement: float, difference: float, margin: float) -> float:
    needed = rows_to_resolve(disagreement, difference, margin, 0.95)
    return float("inf") if needed is None else needed


@PROPERTY
@given(st.floats(0, 1), st.floats(0, 1), st.floats(-1, 1), st.floats(0, 0.5), st.floats(0, 0.5))
def test_rows_to_resolve_never_needs_fewer_rows_for_more_disagreement_or_a_smaller_margin(
        p1, p2, share, m1, m2):
    low, high = sorted((p1, p2))
    difference = share * low  # |d| <= the lesser disagreement: a difference both shares allow
    small, large = sorted((m1, m2))
    assert _rows_or_infinity(low, difference, large) <= _rows_or_infinity(high, difference, large)
    assert _rows_or_infinity(low, difference, large) <= _rows_or_infinity(low, difference, small)


# --- cost checks: how much accuracy a cheaper model gives up against its reference, on the same rows -----------

COST_BOUND = 0.02


@pytest.mark.parametrize("case, expected", [
    ((2000, 0.85, 0.85, 40), CHECK_PASS),          # nothing lost, resolved: the upper end is about +0.006
    ((1000, 0.80, 0.85, 20), CHECK_FAIL),          # five points lost: the lower end is about +0.034
    ((950, 0.8214, 0.8351, 28), CHECK_INCONCLUSIVE),  # 1.37 points lost, SE 0.0067: about [+0.000, +0.027]
])
def test_paired_cost_of_constructed_predictions_gives_each_outcome(case, expected):
    rows, candidate_right, reference_right, _ = case
    y_true, candidate, reference = constructed_pair(*case)
    cost = paired_cost(y_true, reference, candidate, 2, COST_BOUND, 2000, 0.95, seed=42)
    assert cost["outcome"] == expected, cost
    assert cost["value"] == (int(reference_right * rows) - int(candidate_right * rows)) / rows
    assert cost["low"] <= cost["value"] <= cost["high"] and cost["rows"] == rows and cost["bound"] == COST_BOUND
    assert cost["se"] == pytest.approx(paired_accuracy_se(reference == y_true, candidate == y_true))
    if expected == CHECK_PASS:
        assert cost["high"] <= COST_BOUND
    if expected == CHECK_FAIL:
        assert cost["low"] > COST_BOUND


def test_an_inconclusive_cost_reports_the_rows_that_would_settle_it():
    y_true, candidate, reference = constructed_pair(950, 0.8214, 0.8351, 28)
    cost = paired_cost(y_true, reference, candidate, 2, COST_BOUND, 2000, 0.95, seed=42)
    # 41 of 950 rows differ in correctness, 13 net: n = 1.96^2 (41/950 - (13/950)^2) / (0.02 - 13/950)^2 = 4139.
    assert cost["disagreement"] == 41 / 950 and cost["outcome"] == CHECK_INCONCLUSIVE
    assert cost["rows_needed"] == rows_to_resolve(41 / 950, 13 / 950, COST_BOUND - 13 / 950, 0.95)
    assert cost["rows_needed"] == pytest.approx(4139, abs=1) and cost["rows_needed"] > cost["rows"]


def test_the_same_predictions_judged_as_a_point_value_would_reject():
    """What the rule replaces: 1.37 points lost against a 1-point bound was a REJECT; the interval cannot say."""
    y_true, candidate, reference = constructed_pair(950, 0.8214, 0.8351, 28)
    cost = paired_cost(y_true, reference, candidate, 2, 0.01, 2000, 0.95, seed=42)
    assert cost["value"] > 0.01 and cost["low"] < 0.01 and cost["outcome"] == CHECK_INCONCLUSIVE


def test_a_model_judged_against_itself_costs_exactly_nothing_and_passes_any_bound():
    y_true, candidate, _ = constructed_pair(300, 0.8, 0.8, 0)
    cost = paired_cost(y_true, candidate, candidate.copy(), 2, 0.0, 500, 0.95, seed=1)
    assert (cost["value"], cost["low"], cost["high"], cost["outcome"], cost["rows_needed"]) == (0.0, 0.0, 0.0,
                                                                                                CHECK_PASS, None)


@pytest.mark.parametrize("low, high, outcome", [
    (0.00, 0.02, CHECK_PASS),          # the upper end on the bound is within it
    (0.02, 0.04, CHECK_INCONCLUSIVE),  # the lower end on the bound is not beyond it
    (0.021, 0.04, CHECK_FAIL),
])
def test_cost_outcome_at_the_bound(low, high, outcome):
    drop = {"value": (low + high) / 2, "low": low, "high": high}
    assert cost_outcome(drop, 0.05, COST_BOUND, 0.95)["outcome"] == outcome


def test_a_cost_exactly_on_the_bound_can_never_be_settled():
    drop = {"value": COST_BOUND, "low": 0.01, "high": 0.03}
    assert cost_outcome(drop, 0.05, COST_BOUND, 0.95) == {"outcome": CHECK_INCONCLUSIVE, "rows_needed": None}


def test_ece_interval_is_metric_intervals_ece_from_the_same_resamples():
    rng = np.random.default_rng(3)
    probs, y_true = rng.dirichlet([1, 1, 1], size=400), rng.integers(0, 3, 400)
    assert ece_interval(y_true, probs, 500, 0.9, 7, 10) == metric_intervals(y_true, probs, ["a", "b", "c"], 500, 0.9,
                                                                            7, 10)["ece"]
