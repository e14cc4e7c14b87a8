"""Accuracy estimated without labels: its interval covers the realised accuracy of calibrated windows about as often
as it says, the monitor's estimated_accuracy_drop check passes, fails and skips as its bound says, and the estimate
reaches the report and the history."""

import json

import numpy as np
import pytest

from tasks.core.config import parse_config, read_params
from tasks.judging.estimate import expected_accuracy
from tasks.monitoring.history import history_row, history_table
from tasks.monitoring.judge import estimate_baseline, judge_window
from tasks.monitoring.report import render_html, render_markdown
from tests.conftest import REPO
from tests.test_monitoring_drift import gate, reference, unshifted_window  # noqa: F401 - reference is a fixture

CHECK = "estimated_accuracy_drop"


@pytest.fixture(scope="module")
def monitor_cfg():
    return parse_config(read_params(REPO / "params.yaml")).monitor


# --- the estimate ---------------------------------------------------------------------------------------------------

def calibrated_window(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Top-class probabilities of a calibrated model and the accuracy it realises: text i is right with probability
    c_i, exactly what calibration means."""
    confidences = rng.uniform(0.5, 1.0, size=rows)
    return confidences, float((rng.random(rows) < confidences).mean())


def test_expected_accuracy_covers_calibrated_windows_near_its_nominal_level():
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(2000):
        confidences, realised = calibrated_window(200, rng)
        estimate = expected_accuracy(confidences, 0.95)
        covered.append(estimate["low"] <= realised <= estimate["high"])
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_expected_accuracy_misses_when_the_model_is_overconfident():
    # the same windows, the model claiming 10 points more than it gets right: the interval rarely covers
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(500):
        confidences, realised = calibrated_window(200, rng)
        estimate = expected_accuracy(np.minimum(confidences + 0.1, 1.0), 0.95)
        covered.append(estimate["low"] <= realised <= estimate["high"])
    assert np.mean(covered) < 0.2


def test_expected_accuracy_interval_narrows_with_rows_and_is_the_mean_confidence():
    small = expected_accuracy(np.full(20, 0.8), 0.95)
    large = expected_accuracy(np.full(2000, 0.8), 0.95)
    assert small["value"] == pytest.approx(0.8) and large["value"] == pytest.approx(0.8)
    assert small["high"] - small["low"] > 5 * (large["high"] - large["low"])
    # sd of the realised share: sqrt(0.8 * 0.2 / 2000)
    assert large["high"] - large["value"] == pytest.approx(1.959964 * np.sqrt(0.16 / 2000), rel=1e-4)
    assert small["rows"] == 20


def test_expected_accuracy_of_a_single_text_stays_within_zero_and_one():
    one = expected_accuracy(np.array([0.6]), 0.95)
    assert one == {"value": pytest.approx(0.6), "low": 0.0, "high": 1.0, "rows": 1}
    sure = expected_accuracy(np.array([1.0, 1.0]), 0.95)
    assert sure["low"] == sure["high"] == 1.0, "certain answers have no spread"


def test_expected_accuracy_refuses_an_empty_window():
    with pytest.raises(ValueError, match="no probabilities"):
        expected_accuracy(np.array([]), 0.95)


# --- the check --------------------------------------------------------------------------------------------------------

def judge(window, reference, cfg, gate_figures):  # noqa: F811 - reference is the fixture's value
    return judge_window(window, reference, cfg, labelled=None, gate_figures=gate_figures, seed=0, start=0.0,
                        end=3600.0)


def with_confidence(window: list[dict], low: float, high: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{**r, "confidence": float(c)} for r, c in zip(window, rng.uniform(low, high, size=len(window)))]


def test_estimated_accuracy_drop_passes_a_window_as_sure_as_the_gate_and_records_the_estimate(reference,  # noqa: F811
                                                                                              monitor_cfg):
    window = with_confidence(unshifted_window(300, seed=11, with_text=False), 0.7, 1.0, seed=1)
    judgement = judge(window, reference, monitor_cfg, gate(0.85))
    [check] = [c for c in judgement.checks if c.name == CHECK]
    assert not check.skipped and check.passed and check.value == pytest.approx(0.0, abs=0.02)
    assert check.severity == monitor_cfg.checks[CHECK].severity
    assert judgement.estimate["rows"] == 300 and judgement.estimate["confidence"] == 0.95
    assert judgement.estimate["low"] < judgement.estimate["value"] < judgement.estimate["high"]
    assert check.value == pytest.approx(0.85 - judgement.estimate["value"])
    assert "300 texts" in check.evidence and "test accuracy 0.850" in check.evidence
    assert "no expected_accuracy" in check.evidence, "the fallback baseline is named"


def test_estimated_accuracy_drop_fails_when_the_model_grows_unsure(reference, monitor_cfg):  # noqa: F811
    window = with_confidence(unshifted_window(300, seed=12, with_text=False), 0.5, 0.8, seed=2)
    judgement = judge(window, reference, monitor_cfg, gate(0.85))
    [check] = [c for c in judgement.checks if c.name == CHECK]
    assert not check.passed and check.value == pytest.approx(0.2, abs=0.03)
    assert CHECK in judgement.alarms + judgement.warnings


def test_estimated_accuracy_drop_compares_with_the_gates_expected_accuracy_when_it_has_one(reference,  # noqa: F811
                                                                                         monitor_cfg):
    figures = {**gate(0.80), "expected_accuracy": {"value": 0.92, "low": 0.91, "high": 0.93}}
    window = with_confidence(unshifted_window(300, seed=13, with_text=False), 0.7, 1.0, seed=3)
    judgement = judge(window, reference, monitor_cfg, figures)
    [check] = [c for c in judgement.checks if c.name == CHECK]
    assert check.value == pytest.approx(0.92 - judgement.estimate["value"])
    assert "expected accuracy 0.920 [0.910, 0.930]" in check.evidence
    assert estimate_baseline(figures)[0] == 0.92 and estimate_baseline(gate(0.8))[0] == 0.8


def test_estimated_accuracy_drop_is_skipped_without_the_gates_figures_or_enough_texts(reference,  # noqa: F811
                                                                                     monitor_cfg):
    judgement = judge(unshifted_window(300, seed=14, with_text=False), reference, monitor_cfg, None)
    [check] = [c for c in judgement.checks if c.name == CHECK]
    assert check.skipped and not check.passed and "gate's figures" in check.evidence
    assert judgement.estimate is None and "gate's figures" in judgement.estimate_skipped
    few = judge(unshifted_window(monitor_cfg.min_window_texts - 1, seed=15), reference, monitor_cfg, gate(0.85))
    assert few.estimate is None and "min_window_texts" in few.estimate_skipped


# --- report and history -----------------------------------------------------------------------------------------------

def test_report_and_history_carry_the_estimate_with_its_interval(reference, monitor_cfg):  # noqa: F811
    window = with_confidence(unshifted_window(300, seed=16, with_text=False), 0.7, 1.0, seed=4)
    judgement = json.loads(json.dumps(judge(window, reference, monitor_cfg, gate(0.85)).to_dict()))
    estimate = judgement["estimate"]
    markdown = render_markdown(judgement)
    assert (f"accuracy estimated without labels: {estimate['value']:.3f} [{estimate['low']:.3f}, "
            f"{estimate['high']:.3f}] (95% interval") in markdown
    assert f"| {CHECK} |" in markdown
    assert f"{estimate['value']:.3f}" in render_html(judgement)
    row = history_row(judgement)
    assert row["estimate"] == {"value": estimate["value"], "low": estimate["low"], "high": estimate["high"],
                               "confidence": 0.95, "rows": 300}
    columns, cells = history_table([row])
    assert cells[0][columns.index("est. accuracy")] == (f"{estimate['value']:.2f} {estimate['low']:.2f}-"
                                                        f"{estimate['high']:.2f}")


def test_report_and_history_of_a_judgement_without_an_estimate_say_so():
    older = {"start": 0.0, "end": 3600.0, "texts": 250, "version": "v0.1.0", "checks": [], "judged": True,
             "alarms": [], "warnings": []}  # written before the monitor estimated accuracy
    assert "accuracy estimated without labels: not computed (not recorded" in render_markdown(older)
    row = history_row(older)
    assert row["estimate"] is None
    line = json.loads('{"start": 0, "end": 3600, "version": "v0.1.0", "texts": 250, "judged": true, "alarms": [], '
                      '"warnings": [], "new_rows": 0, "figures": {}}')  # an older history line
    columns, cells = history_table([row, line])
    assert [c[columns.index("est. accuracy")] for c in cells] == ["-", "-"]
