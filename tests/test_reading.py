"""Choosing how long texts are read: every candidate scored on dev, the cheapest kept unless one is clearly better."""

import json
import typing

import numpy as np
import pytest

from tasks.core.config import ConfigError, LongTextConfig, WindowRule, parse_config, read_params
from tasks.core.paths import ArtifactPaths
from tasks.runtime.long_text import AGGREGATES, HEAD, MAX_WINDOWS, RULES, Wrapper, combine, normalise, read_ids
from tasks.training.reading import (candidate_logits, choose, chosen_long_text, long_text_path, long_text_report,
                                    summary, window_groups, window_set, write_long_text)
from tests.conftest import REPO

WRAPPER = Wrapper(prefix=(101,), suffix=(102,))  # [CLS] text [SEP]
MAX_LENGTH = 6  # 4 content tokens per window
HEAD_TAIL = {"rule": "head_tail", "head_tokens": 1}
MEAN_PROB = {"rule": "window", "stride": 2, "aggregate": "mean_prob"}
MEAN_LOGIT = {"rule": "window", "stride": 2, "aggregate": "mean_logit"}
MAX_CONFIDENCE = {"rule": "window", "stride": 2, "aggregate": "max_confidence"}


def rows(correct: int, wrong: int) -> np.ndarray:
    return np.array([True] * correct + [False] * wrong)


def test_choose_keeps_the_cheapest_when_a_costlier_gain_is_within_min_gain_se():
    head = rows(80, 20)
    # 4 rows better, 2 worse: gain 0.02, paired SE sqrt((0.06 - 0.0004) / 100) = 0.0244 > 0.02
    costlier = head.copy()
    costlier[80:84] = True
    costlier[:2] = False
    chosen, steps = choose([head, costlier], min_gain_se=1.0)
    assert chosen == 0
    assert steps[1]["gain_vs_chosen"] == pytest.approx(0.02)
    assert steps[1]["gain_se"] == pytest.approx(np.sqrt((0.06 - 0.02 ** 2) / 100))
    assert not steps[1]["replaced_choice"]
    assert choose([head, costlier], min_gain_se=0.5)[0] == 1, "half an SE is less than the gain"


def test_choose_switches_to_a_clearly_better_candidate_and_compares_later_ones_with_it():
    head = rows(70, 30)
    window = head.copy()
    window[70:85] = True  # 15 rows better, none worse: gain 0.15, SE sqrt((0.15 - 0.0225) / 100) = 0.036
    slightly_better = window.copy()
    slightly_better[85] = True  # one row more than the window gets, none fewer
    chosen, steps = choose([head, window, slightly_better], min_gain_se=1.0)
    assert steps[1]["replaced_choice"] and steps[2]["compared_with"] == 1
    assert steps[2]["gain_vs_chosen"] == pytest.approx(0.01)
    # one row only it gets right: SE = sqrt((0.01 - 0.0001) / 100) = 0.00995 < 0.01: a zero-loss gain counts
    assert chosen == 2


def test_choose_needs_a_strictly_positive_gain_when_the_se_is_zero():
    same = rows(60, 40)
    chosen, steps = choose([same, same.copy()], min_gain_se=1.0)
    assert chosen == 0 and steps[1]["gain_se"] == 0.0 and steps[1]["gain_vs_chosen"] == 0.0
    assert choose([same, same.copy()], min_gain_se=0.0)[0] == 0, "no gain: the cheaper stays even at 0 SE"


def fake_runner(calls: list[int]):
    """A 'model' whose class-1 logit counts token 7 and class-0 logit counts token 8 in a window."""
    def run(windows):
        calls.append(len(windows))
        return np.array([[w.count(8), w.count(7)] for w in windows], dtype=np.float32)
    return run


def test_candidate_logits_run_each_window_set_once_and_short_texts_once():
    # text 0 fits one window; text 1 (10 tokens) says 8 at its head and 7 everywhere after
    contents = [[7, 7, 5], [8, 8, 5, 5, 7, 7, 7, 7, 7, 7]]
    rules = [HEAD, HEAD_TAIL, MEAN_PROB, MEAN_LOGIT, MAX_CONFIDENCE]
    calls: list[int] = []
    logits = candidate_logits(contents, rules, MAX_LENGTH, WRAPPER, fake_runner(calls), max_windows=64, classes=2)
    long_windows = len(read_ids([contents[1]], MEAN_PROB, MAX_LENGTH, WRAPPER).windows)
    # short text once; the long one by head, head_tail and (shared by three aggregates) its windows
    assert calls == [1, 1, 1, long_windows]
    assert all(np.array_equal(lg[0], logits[0][0]) for lg in logits), "a text within one window reads alike"
    assert logits[0][1].argmax() == 0, "head reads only the 8s"
    assert logits[1][1].argmax() == 1, "head_tail reads the 7s at the end"
    reading = read_ids([contents[1]], MEAN_LOGIT, MAX_LENGTH, WRAPPER)
    per_window = fake_runner([])(reading.windows)
    assert np.allclose(logits[3][1], combine(per_window, reading.owners, 1, MEAN_LOGIT)[0])


CAPPED = {"rule": "window", "stride": 2, "max_windows": 2, "aggregate": "mean_prob"}


def test_window_set_tells_a_capped_window_rule_from_an_uncapped_one():
    assert window_set(CAPPED) != window_set(MEAN_PROB)
    assert window_set(CAPPED) == window_set({**CAPPED, "aggregate": "max_confidence"}), "aggregates share windows"
    assert window_set({**MEAN_PROB, "max_windows": MAX_WINDOWS}) == window_set(MEAN_PROB), "absent = MAX_WINDOWS"
    assert window_set(HEAD) != window_set(HEAD_TAIL)


def test_candidate_logits_run_capped_windows_as_their_own_set():
    contents = [[7, 7, 5], [8, 8, 5, 5, 7, 7, 7, 7, 7, 7]]  # the long one: 4 windows at stride 2, 2 when capped
    capped_max = {**CAPPED, "aggregate": "max_confidence"}
    calls: list[int] = []
    logits = candidate_logits(contents, [MEAN_PROB, CAPPED, capped_max], MAX_LENGTH, WRAPPER, fake_runner(calls),
                              max_windows=64, classes=2)
    assert calls == [1, 4, 2], "short text once, the uncapped windows once, the capped ones once (shared)"
    reading = read_ids([contents[1]], CAPPED, MAX_LENGTH, WRAPPER)
    assert reading.windows == [[101, 8, 8, 5, 5, 102], [101, 7, 7, 7, 7, 102]], "first and last window"
    per_window = fake_runner([])(reading.windows)
    assert np.allclose(logits[1][1], combine(per_window, reading.owners, 1, CAPPED)[0])
    assert np.allclose(logits[2][1], combine(per_window, reading.owners, 1, capped_max)[0])


def test_the_default_candidates_come_cheapest_first_in_windows_per_long_text():
    train = read_params(REPO / "params.yaml")["train"]
    rules = [normalise(c.model_dump()) for c in LongTextConfig.model_validate(train["long_text"]).candidates]
    assert rules[:2] == [HEAD, {"rule": "head_tail", "head_tokens": 16}]
    assert {"rule": "window", "stride": 62, "max_windows": 4, "aggregate": "mean_prob"} in rules
    wrapper = Wrapper(prefix=(101,), suffix=(102,))
    for length in (100, 300, 600, 3_000):  # long reviews: about 1.5 to 50 windows of 62 content tokens
        windows = [len(read_ids([[5] * length], rule, train["max_length"], wrapper).windows) for rule in rules]
        assert windows == sorted(windows), f"{length} tokens: {windows}"
    # the cap only lowers the cost: a capped rule never reads more windows than the same rule uncapped
    capped = [r for r in rules if "max_windows" in r]
    assert capped and all({k: v for k, v in r.items() if k != "max_windows"} in rules for r in capped)


def test_window_groups_hold_whole_texts_within_the_window_budget():
    reading = read_ids([[1] * 20, [1], [1] * 9, [1, 2]], MEAN_PROB, MAX_LENGTH, WRAPPER)
    counts = reading.window_counts()
    groups = window_groups(reading, max_windows=4)
    assert sorted(np.concatenate(groups).tolist()) == [0, 1, 2, 3]
    for group in groups:
        assert len(group) == 1 or sum(counts[i] for i in group) <= 4
    assert [0] in [g.tolist() for g in groups], "a text with more windows than the budget is a call of its own"


def test_long_text_json_is_written_and_read_back_with_every_candidate(tmp_path):
    labels = np.array([1, 1, 0, 1])
    long = np.array([False, True, True, True])
    head = np.array([[0, 1], [1, 0], [1, 0], [1, 0]], dtype=np.float32)  # right on rows 0, 2
    window = np.array([[0, 1], [0, 1], [1, 0], [0, 1]], dtype=np.float32)  # right everywhere: SE 0, gain > 0
    rules = [HEAD, MEAN_PROB]
    report = long_text_report(rules, [head, window], labels, long, windows=[4, 9], min_gain_se=1.0)
    paths = ArtifactPaths(tmp_path)
    assert chosen_long_text(paths) == HEAD, "a run trained before rules were chosen reads head"
    paths.stage_dir("train").mkdir(parents=True)
    write_long_text(paths.stage_dir("train"), report)
    stored = json.loads(long_text_path(paths).read_text())
    assert chosen_long_text(paths) == MEAN_PROB == stored["chosen"]
    assert stored["dev_rows"] == 4 and stored["long_rows"] == 3 and stored["min_gain_se"] == 1.0
    first, second = stored["candidates"]
    assert (first["dev_accuracy"], first["dev_long_accuracy"], first["chosen"]) == (0.5, pytest.approx(1 / 3), False)
    assert (second["dev_accuracy"], second["dev_long_accuracy"], second["chosen"]) == (1.0, 1.0, True)
    assert second["compared_with"] == "head" and second["gain_vs_chosen"] == 0.5 and second["windows"] == 9
    assert "window(stride 2, mean_prob): dev 1.0000 vs head 0.5000" in summary(stored)


def test_config_rules_have_the_shapes_long_text_reads():
    kinds = typing.get_args(typing.get_args(LongTextConfig.model_fields["candidates"].annotation)[0])
    rules = typing.get_args(kinds[0])
    assert tuple(typing.get_args(r.model_fields["rule"].annotation)[0] for r in rules) == RULES
    assert typing.get_args(WindowRule.model_fields["aggregate"].annotation) == AGGREGATES
    bounds = {type(m).__name__: m for m in WindowRule.model_fields["max_windows"].metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == (1, MAX_WINDOWS)


def test_config_takes_a_window_cap_and_dumps_a_rule_without_one_as_written():
    section = read_params(REPO / "params.yaml")["train"]["long_text"]
    capped = {"rule": "window", "stride": 62, "max_windows": 4, "aggregate": "mean_prob"}
    uncapped = {"rule": "window", "stride": 62, "aggregate": "mean_prob"}
    long_text = LongTextConfig.model_validate({**section, "candidates": [{"rule": "head"}, capped, uncapped]})
    assert [c.model_dump() for c in long_text.candidates] == [{"rule": "head"}, capped, uncapped]
    # params.yaml's shape (what stamps and long_text.json record): no max_windows: null added
    assert long_text.model_dump(mode="json")["candidates"] == [{"rule": "head"}, capped, uncapped]
    assert json.loads(long_text.candidates[2].model_dump_json()) == uncapped
    assert [normalise(c.model_dump()) for c in long_text.candidates] == [HEAD, capped, uncapped]


@pytest.mark.parametrize("candidates, message", [
    ([{"rule": "window", "stride": 31}], "aggregate"),
    ([{"rule": "tail"}], "rule"),
    ([{"rule": "window", "stride": 0, "aggregate": "mean_prob"}], "stride"),
    ([{"rule": "head"}, {"rule": "head"}], "must not repeat"),
    ([{"rule": "head_tail", "head_tokens": 64}], "must be below train.max_length"),
    ([{"rule": "window", "stride": 62, "max_windows": 0, "aggregate": "mean_prob"}], "max_windows"),
    ([{"rule": "window", "stride": 62, "max_windows": 65, "aggregate": "mean_prob"}], "max_windows"),
    ([{"rule": "window", "stride": 62, "max_windows": "4", "aggregate": "mean_prob"}], "max_windows"),
    ([{"rule": "window", "stride": 62, "max_windows": None, "aggregate": "mean_prob"}], "max_windows"),
    ([{"rule": "head", "max_windows": 4}], "max_windows"),
    ([], "candidates"),
])
def test_config_rejects_a_long_text_candidate_no_reader_can_use(candidates, message):
    raw = read_params(REPO / "params.yaml")
    raw["train"]["long_text"]["candidates"] = candidates
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)
