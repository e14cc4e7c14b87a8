"""The counted cost of a served model: MACs of its graph's matrix products per window, windows per text."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from tasks.judging.cost import CostCountError, WindowCost, cost_record, text_macs, window_cost
from tasks.runtime.long_text import Reading, Wrapper, read_ids


def toy_graph(path, sequence: str | int = "sequence") -> None:
    """ids [batch, L] -> [batch, L, 1] -> x W1 [1, 8] -> x W2 [8, 8] -> scores x.x^T [batch, L, L]:
    per token 1 x 8 + 8 x 8 = 72 MACs, per pair of tokens 8 MACs, nothing per window."""
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["ids", "last"], ["column"]),
             helper.make_node("MatMul", ["column", "w1"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "w2"], ["projected"]),
             helper.make_node("Transpose", ["projected"], ["transposed"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["projected", "transposed"], ["logits"])]
    weights = [numpy_helper.from_array(np.ones((1, 8), np.float32), "w1"),
               numpy_helper.from_array(np.ones((8, 8), np.float32), "w2"),
               numpy_helper.from_array(np.array([-1], np.int64), "last")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                           ["batch", sequence])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_window_cost_counts_every_matrix_product_of_the_graph(tmp_path):
    toy_graph(tmp_path / "toy.onnx")
    cost = window_cost(tmp_path / "toy.onnx", 16)
    assert cost == WindowCost(constant=0, per_token=72, per_token_pair=8)
    assert cost.macs(16) == 72 * 16 + 8 * 16 * 16


def test_a_graph_that_cannot_run_on_a_window_is_a_named_error(tmp_path):
    toy_graph(tmp_path / "fixed.onnx", sequence=16)  # only 16-token windows: the fit's short windows cannot run
    with pytest.raises(CostCountError, match="did not run on one window of 2 tokens"):
        window_cost(tmp_path / "fixed.onnx", 16)


def test_a_text_costs_its_windows_at_the_width_of_its_longest():
    # Text 0: one window of 5 tokens; text 1: three windows padded to 8 (one call holds them all).
    reading = Reading(windows=[[1] * 5, [1] * 8, [1] * 8, [1] * 6], owners=np.array([0, 1, 1, 1]),
                      content_lengths=[3, 20])
    cost = WindowCost(constant=10, per_token=100, per_token_pair=1)
    assert text_macs(reading, cost).tolist() == [10 + 500 + 25, 3 * (10 + 800 + 64)]
    record = cost_record(reading, cost, max_length=8)
    assert record["windows_per_text"] == {"mean": 2.0, "max": 3}
    assert record["window_macs"]["full_window"] == 874 and record["gmacs_per_text"]["max"] == 3 * 874 / 1e9


def test_a_window_rules_cap_lowers_the_windows_and_macs_counted_per_text():
    # 64-token windows (62 content tokens), texts of 40 (one window) and 600 content tokens.
    wrapper, contents = Wrapper(prefix=(101,), suffix=(102,)), [[5] * 40, [5] * 600]
    uncapped = {"rule": "window", "stride": 62, "aggregate": "mean_prob"}
    capped = {**uncapped, "max_windows": 4}
    cost = WindowCost(constant=10, per_token=100, per_token_pair=1)
    full, short = cost.macs(64), cost.macs(42)
    assert read_ids(contents, uncapped, 64, wrapper).window_counts() == [1, 10]
    reading = read_ids(contents, capped, 64, wrapper)
    assert reading.window_counts() == [1, 4]
    assert text_macs(reading, cost).tolist() == [short, 4 * full]
    record = cost_record(reading, cost, max_length=64)
    assert record["windows_per_text"] == {"mean": 2.5, "max": 4}
    assert record["gmacs_per_text"]["max"] == 4 * full / 1e9
    assert cost_record(read_ids(contents, uncapped, 64, wrapper), cost, 64)["gmacs_per_text"]["max"] == 10 * full / 1e9


def test_the_shipped_models_count_is_its_architecture_whatever_its_graph_form(staged_pipeline):
    """Raw export, fused (optimised) graph and the shipped INT8 graph of one architecture count the same, and the
    count is the architecture's: per token 4 H^2 + 2 H F per layer, per pair of tokens 2 H per layer (scores and
    context), per window the pooler and the classifier."""
    cfg, paths = staged_pipeline
    config = json.loads((paths.onnx_dir / "config.json").read_text())
    hidden, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    expected = WindowCost(constant=hidden * hidden + hidden * len(cfg.data.label_names),
                          per_token=layers * (4 * hidden * hidden + 2 * hidden * ffn),
                          per_token_pair=layers * 2 * hidden)
    teacher_graphs = sorted(paths.onnx_dir.glob("*.onnx"))
    assert len(teacher_graphs) >= 2, "the raw and the optimised export"
    for graph in teacher_graphs:
        assert window_cost(graph, cfg.train.max_length) == expected, graph.name
    shipped = json.loads((paths.int8_dir / "config.json").read_text())
    student = WindowCost(constant=expected.constant,
                         per_token=shipped["num_hidden_layers"] * (4 * hidden * hidden
                                                                   + 2 * hidden * shipped["intermediate_size"]),
                         per_token_pair=shipped["num_hidden_layers"] * 2 * hidden)
    assert window_cost(paths.int8_dir / "model.onnx", cfg.train.max_length) == student


def test_the_gate_records_the_shipped_models_cost_and_judges_its_p95(staged_pipeline):
    cfg, paths = staged_pipeline
    decision = json.loads(paths.decision.read_text())
    cost = decision["compute_cost"]
    [budget] = [c for c in decision["checks"] if c["check"] == "cost per text, p95 (GMACs, batch 1)"]
    assert budget["value"] == cost["gmacs_per_text"]["p95"] and budget["threshold"] == cfg.gate.max_gmacs_per_text_p95
    assert budget["outcome"] == ("pass" if budget["value"] <= budget["threshold"] else "fail")
    assert cost["window_macs"]["full_window_tokens"] == cfg.train.max_length
    assert cost["texts"] == decision["metrics"]["rows"]
    from tasks.runtime.predict import load_served_model

    reading = load_served_model(paths.int8_dir).read(list(pd.read_parquet(paths.split("test"))["text"]))
    counted = text_macs(reading, window_cost(paths.int8_dir / "model.onnx", cfg.train.max_length)) / 1e9
    assert cost["gmacs_per_text"] == {"mean": counted.mean(), "p50": np.percentile(counted, 50),
                                      "p95": np.percentile(counted, 95), "max": counted.max()}
    assert cost["windows_per_text"]["max"] == max(reading.window_counts())
    assert cost["gmacs_per_text"]["p50"] <= cost["gmacs_per_text"]["p95"] <= cost["gmacs_per_text"]["max"]
    assert "## Compute cost" in (paths.stage_dir("gate") / "report.md").read_text()
