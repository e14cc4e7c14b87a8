"""What a served model costs per text, counted instead of timed: multiply-accumulates (MACs) of its ONNX graph's
matrix products at the window sizes the reading rule gives each text. The same folder and texts give the same
count on any host under any load, so a budget on it can decide a tracked verdict (a clock cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import TunegateError
from tasks.runtime.long_text import Reading

# Products of two matrices, whatever their precision: MACs = elements of the output x the shared (inner) dimension.
MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "FusedMatMul",
                        "QLinearMatMul", "Gemm", "QGemm"})
# onnxruntime's fused attention (input [batch, tokens, hidden_in], weight [hidden_in, 3 x hidden]): the Q, K, V
# projections plus the scores (Q.K^T) and the context (scores.V), each tokens^2 x hidden per window.
ATTENTION_OPS = frozenset({"Attention", "QAttention"})
# Window lengths (tokens) the per-window cost is fitted on: short ones, past a length of 1 (where a [1, 1] mask
# broadcasts); the fit is then checked at the model's full window.
FIT_TOKENS = (2, 3, 4)
GIGA = 1e9


class CostCountError(TunegateError):
    """The graph did not run at a window length, or its cost is not a quadratic in the window length."""


def counted_nodes(graph: Any) -> list[Any]:
    """The graph's matrix-product and attention nodes: the ones whose size is counted."""
    return [node for node in graph.node if node.op_type in MATMUL_OPS | ATTENTION_OPS]


def probe(model: Any) -> tuple[Any, list[str]]:
    """An onnxruntime session (CPU, graph as written) on a copy of `model` that also returns the inputs and outputs
    of every counted node, and the names of those tensors (weights, whose shapes the graph states, left out)."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    weights = {init.name for init in copy.graph.initializer}
    listed = {output.name for output in copy.graph.output}
    names: list[str] = []
    for node in counted_nodes(copy.graph):
        for name in (node.input[0], node.input[1], node.output[0]):
            if name and name not in weights and name not in names:
                names.append(name)
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in listed)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As written: fusions at load time would replace the very nodes whose tensors are read back.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"]), names


def window_inputs(session: Any, tokens: int) -> dict[str, np.ndarray]:
    """int64 inputs of one window of `tokens` tokens: token ids and type ids 0 (present in every vocabulary), the
    attention mask all ones. Only the shapes matter: a product's size does not depend on the values."""
    return {i.name: (np.ones if "mask" in i.name else np.zeros)((1, tokens), dtype=np.int64)
            for i in session.get_inputs()}


def node_macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    """MACs of one matrix-product or attention node at these shapes; 0 for any other node."""
    if node.op_type in MATMUL_OPS:
        a = shapes[node.input[0]]
        inner = a[-2] if any(x.name == "transA" and x.i for x in node.attribute) else a[-1]
        return int(np.prod(shapes[node.output[0]], dtype=np.int64)) * int(inner)
    if node.op_type in ATTENTION_OPS:
        batch, tokens, hidden_in = shapes[node.input[0]]
        qkv = shapes[node.input[1]][1]  # Q, K and V widths together
        return int(batch * (tokens * hidden_in * qkv + 2 * tokens * tokens * (qkv // 3)))
    return 0


def graph_macs(model: Any, token_counts: tuple[int, ...]) -> list[int]:
    """MACs of one call of the model on one window of each of `token_counts` tokens (shapes read back from one
    run per length: exact for any graph onnxruntime runs, whatever its ops and precision)."""
    session, names = probe(model)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    nodes = counted_nodes(model.graph)
    counts = []
    for tokens in token_counts:
        try:
            values = session.run(names, window_inputs(session, tokens))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the count cannot be made
            raise CostCountError(f"the graph did not run on one window of {tokens} tokens: "
                                 f"{type(exc).__name__}: {exc}") from exc
        shapes = {**weights, **{name: value.shape for name, value in zip(names, values)}}
        counts.append(sum(node_macs(node, shapes) for node in nodes))
    return counts


@dataclass(frozen=True)
class WindowCost:
    """MACs of one window of L tokens: constant + per_token x L + per_token_pair x L^2 (a transformer encoder's
    products are each a constant, L or L^2 in size: per-window heads, per-token projections, attention)."""

    constant: int
    per_token: int
    per_token_pair: int

    def macs(self, tokens: int) -> int:
        return self.constant + self.per_token * tokens + self.per_token_pair * tokens * tokens


def window_cost(model_path: Path, max_length: int) -> WindowCost:
    """The per-window cost of the ONNX model at `model_path`, counted on its graph at FIT_TOKENS and checked at
    max_length (its full window): CostCountError when the count is not that quadratic."""
    import onnx

    model = onnx.load(str(model_path))
    first, second, third, full = graph_macs(model, (*FIT_TOKENS, max_length))
    start = FIT_TOKENS[0]
    # Differences of a quadratic at consecutive lengths: the second one is 2 x per_token_pair.
    pair = (third - 2 * second + first) // 2
    per_token = second - first - pair * (2 * start + 1)
    cost = WindowCost(constant=first - per_token * start - pair * start * start, per_token=per_token,
                      per_token_pair=pair)
    if cost.macs(max_length) != full:
        raise CostCountError(f"{model_path.name}: {full} MACs at {max_length} tokens, but {cost.macs(max_length)} "
                             f"from the quadratic fitted at {FIT_TOKENS} tokens: the cost is not quadratic in length")
    return cost


def text_macs(reading: Reading, cost: WindowCost) -> np.ndarray:
    """[texts] int64 MACs of scoring each text alone (batch 1, as one request is served and the gate judges):
    one call holding all its windows, padded to its longest."""
    return np.asarray([windows * cost.macs(width) for windows, width in zip(reading.window_counts(),
                                                                               reading.widths())], dtype=np.int64)


def cost_record(reading: Reading, cost: WindowCost, max_length: int) -> dict[str, Any]:
    """The decision's cost figures: per-window coefficients, windows and GMACs per text (mean, p50, p95, max)."""
    gmacs = text_macs(reading, cost) / GIGA
    windows = np.asarray(reading.window_counts())
    return {"unit": "GMACs per text, batch 1 (multiply-accumulates of the graph's matrix products)",
            "window_macs": {"constant": cost.constant, "per_token": cost.per_token,
                            "per_token_pair": cost.per_token_pair, "full_window": cost.macs(max_length),
                            "full_window_tokens": max_length},
            "texts": len(gmacs),
            "windows_per_text": {"mean": float(windows.mean()), "max": int(windows.max())},
            "gmacs_per_text": {"mean": float(gmacs.mean()), "p50": float(np.percentile(gmacs, 50)),
                               "p95": float(np.percentile(gmacs, 95)), "max": float(gmacs.max())}}
