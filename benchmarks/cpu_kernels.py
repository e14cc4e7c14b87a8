"""onnxruntime CPU kernels on this host, at the default model's shapes: what the INT8 model can reach.

Two measurements, each a one-node onnxruntime graph timed in this process:
  - GEMM throughput, FP32 MatMul vs INT8 MatMulInteger (uint8 activations x int8 weights, the
    kernel dynamic quantization runs): the rate that bounds any INT8 model on onnxruntime here
    (no VNNI on AVX2 means INT8 is only ~2x FP32);
  - SkipLayerNormalization vs the LayerNormalization + Add it fuses: why tunegate saves graphs
    without that fusion for CPU (tasks/onnx_model.py CPU_SLOW_FUSIONS).
Prints a table, then one JSON line.

    python benchmarks/cpu_kernels.py [--hidden 384] [--intermediate 1536] [--runs 20] [--layer-norm-runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.runtime.onnx_model import inference_session, share_one_thread_pool  # noqa: E402

OPSET = 17


def single_graph_session(nodes: list, inputs: dict[str, tuple[int, list[int]]], output: tuple[int, list[int]],
                         initializers: list, optimise: bool = True):
    """An onnxruntime CPU session for a small graph; `inputs` maps names to (ONNX dtype, shape)."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "kernel",
                              [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info("Y", *output)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    options = ort.SessionOptions()
    if not optimise:  # keep the graph exactly as built (no fusion of the unfused baseline)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return inference_session(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def median_seconds(call: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gemm_call(m: int, k: int, n: int, int8: bool) -> Callable[[], object]:
    """One [m, k] x [k, n] product as a call: FP32 MatMul, or uint8 x int8 MatMulInteger."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weights = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "W"),
                   numpy_helper.from_array(np.array(0, np.int8), "W_zero")]
        node = helper.make_node("MatMulInteger", ["A", "W", "", "W_zero"], ["Y"])
        types, a = (TensorProto.UINT8, TensorProto.INT32), rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        weights = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")]
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        types, a = (TensorProto.FLOAT, TensorProto.FLOAT), rng.standard_normal((m, k)).astype(np.float32)
    session = single_graph_session([node], {"A": (types[0], [m, k])}, (types[1], [m, n]), weights)
    return lambda: session.run(None, {"A": a})


def empty_call(m: int, k: int) -> Callable[[], object]:
    """A session call that does no work (Identity on an [m, k] input): what every call costs anyway."""
    from onnx import TensorProto, helper

    session = single_graph_session([helper.make_node("Identity", ["A"], ["Y"])], {"A": (TensorProto.UINT8, [m, k])},
                                   (TensorProto.UINT8, [m, k]), [])
    a = np.zeros((m, k), dtype=np.uint8)
    return lambda: session.run(None, {"A": a})


def gemm_gmacs(m: int, k: int, n: int, int8: bool, runs: int = 20) -> float:
    """Measured GMAC/s of one [m, k] x [k, n] product, the cost of an empty call taken off."""
    seconds = median_seconds(gemm_call(m, k, n, int8), runs) - median_seconds(empty_call(m, k), runs)
    return m * k * n / seconds / 1e9


def layer_norm_us(rows: int, hidden: int, fused: bool, runs: int = 200) -> float:
    """Median microseconds of residual add + layer norm on [rows, hidden]: fused SkipLayerNormalization or not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("gamma", "beta")]
    if fused:
        nodes = [helper.make_node("SkipLayerNormalization", ["A", "S", "gamma", "beta"], ["Y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["A", "S"], ["sum"]),
                 helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["Y"], axis=-1, epsilon=1e-12)]
    shape = [rows, hidden]
    session = single_graph_session(nodes, {"A": (TensorProto.FLOAT, shape), "S": (TensorProto.FLOAT, shape)},
                                   (TensorProto.FLOAT, shape), params, optimise=fused)
    feed = {n: rng.standard_normal(shape).astype(np.float32) for n in ("A", "S")}
    return median_seconds(lambda: session.run(None, feed), runs) * 1e6


def gemm_peaks(tokens: int, hidden: int, intermediate: int, runs: int = 20) -> dict[str, float]:
    """Best FP32 and INT8 GEMM rates over the encoder's two feed-forward shapes at `tokens` rows."""
    shapes = [(tokens, hidden, intermediate), (tokens, intermediate, hidden)]
    return {"fp32_gmacs": max(gemm_gmacs(*s, int8=False, runs=runs) for s in shapes),
            "int8_gmacs": max(gemm_gmacs(*s, int8=True, runs=runs) for s in shapes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384, help="hidden size (default model: 384)")
    parser.add_argument("--intermediate", type=int, default=1536, help="feed-forward size (default model: 1536)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per GEMM (median kept)")
    parser.add_argument("--layer-norm-runs", type=int, default=200, help="timed runs per layer-norm variant (median kept)")
    args = parser.parse_args()
    share_one_thread_pool(os.cpu_count() or 1)  # no session slowed by the last one's spinning threads
    results = {}
    print(f"{'kernel':<44}{'b1 x 32':>14}{'b32 x 128':>14}")
    for tokens_name, tokens in (("b1x32", 32), ("b32x128", 4096)):
        results[tokens_name] = {
            **gemm_peaks(tokens, args.hidden, args.intermediate, args.runs),
            "skip_layer_norm_us": layer_norm_us(tokens, args.hidden, fused=True, runs=args.layer_norm_runs),
            "add_layer_norm_us": layer_norm_us(tokens, args.hidden, fused=False, runs=args.layer_norm_runs),
        }
    rows = [("FP32 MatMul, GMAC/s", "fp32_gmacs", ".0f"), ("INT8 MatMulInteger (u8 x s8), GMAC/s", "int8_gmacs", ".0f"),
            ("SkipLayerNormalization, us", "skip_layer_norm_us", ".0f"), ("Add + LayerNormalization, us", "add_layer_norm_us", ".0f")]
    for label, key, fmt in rows:
        print(f"{label:<44}{results['b1x32'][key]:>14{fmt}}{results['b32x128'][key]:>14{fmt}}")
    for shape in results.values():
        shape["int8_over_fp32"] = round(shape["int8_gmacs"] / shape["fp32_gmacs"], 2)
        shape["skip_layer_norm_slowdown"] = round(shape["skip_layer_norm_us"] / shape["add_layer_norm_us"], 2)
    print(f"{'INT8 / FP32 GEMM rate':<44}{results['b1x32']['int8_over_fp32']:>14.2f}{results['b32x128']['int8_over_fp32']:>14.2f}")
    print(f"{'SkipLayerNorm / (Add + LayerNorm) time':<44}{results['b1x32']['skip_layer_norm_slowdown']:>14.2f}"
          f"{results['b32x128']['skip_layer_norm_slowdown']:>14.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
