"""Row-wise dynamic INT8 (tasks.compression.rowwise): a text's answer does not depend on the texts that share its
model call, the integer products fit every x86 kernel exactly, and the answers stay close to FP32."""

import shutil

import numpy as np
import pytest

from tasks.compression.rowwise import WEIGHT_MAX, ZERO_POINT, quantize_rowwise, quantized_weight
from tasks.core.io import read_json, write_json
from tasks.core.metrics import softmax
from tasks.quantize import batch_invariance, build_rung
from tasks.runtime.files import SERVING_FILE
from tasks.runtime.onnx_model import OnnxClassifier

WINDOWED = {"rule": "window", "stride": 7, "aggregate": "mean_prob"}
INVARIANCE_ATOL = 1e-5  # float rounding of padded rows: measured 0 on the tiny model, on AVX-512 VNNI and AVX2


@pytest.fixture(scope="module")
def quantized_pair(served_folders, tmp_path_factory):
    """The tiny FP32 served folder reading long texts as windows, with its row-wise and per-tensor INT8 models."""
    folder = tmp_path_factory.mktemp("rowwise")
    shutil.copytree(served_folders[0], folder, dirs_exist_ok=True)
    write_json(folder / SERVING_FILE, {**read_json(folder / SERVING_FILE), "long_text": WINDOWED})
    quantize_rowwise(folder / "model.onnx", folder / "rowwise.onnx", external=False)
    build_rung("dynamic_per_tensor", folder / "model.onnx", folder / "model.onnx", folder / "per_tensor.onnx", [],
               None)
    return folder


@pytest.fixture(scope="module")
def stress_texts(reviews_frame) -> list[str]:
    """Short sentences and long reviews (many windows each), mixed."""
    texts = list(reviews_frame["text"])
    long = [t for t in texts if len(t) > 600][:20]
    return texts[:140] + long + [" ".join(texts[:30])]


def scored(folder, model_file: str, texts: list[str], groups) -> np.ndarray:
    model = OnnxClassifier(folder, model_file=model_file, target="cpu")
    return softmax(model.reading_logits(model.read(texts), groups))


def test_quantized_weight_uses_seven_bits_per_output_column():
    weight = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    weight[:, 3] = 0.0  # an all-zero column stays zeros
    q, scale = quantized_weight(weight)
    assert q.dtype == np.int8 and np.abs(q).max() == WEIGHT_MAX
    assert np.array_equal(np.abs(q).max(axis=0)[[0, 1, 2, 4]], [WEIGHT_MAX] * 4) and not q[:, 3].any()
    assert np.abs(q * scale - weight).max() <= scale.max() / 2 + 1e-7
    # AVX2's u8s8 kernel adds pairs of uint8 x int8 products in int16: they must never saturate.
    assert 2 * (ZERO_POINT + 127) * WEIGHT_MAX <= np.iinfo(np.int16).max


def test_rowwise_graph_has_no_fp32_matmul_of_a_weight(quantized_pair):
    import onnx

    graph = onnx.load(str(quantized_pair / "rowwise.onnx")).graph
    weights = {init.name for init in graph.initializer}
    ops = [node.op_type for node in graph.node]
    assert ops.count("MatMulIntegerToFloat") == 12  # 2 layers x (Q, K, V, out, FFN in, FFN out)
    assert ops.count("QuantizeLinear") == 8  # 2 layers x (Q, K and V's input, out's, FFN in's, FFN out's)
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert "DynamicQuantizeLinear" not in ops


def test_a_rowwise_product_is_the_formula_of_the_module_docstring_to_the_bit(tmp_path):
    """One MatMul of a [2, 5, 16] activation (one all-zero row, one with a half-way value) by a [16, 8] weight:
    onnxruntime's rewritten graph gives exactly scale_row = max|x_row| / 127, x_q = round half to even of
    x / scale_row, (x_q . W_q) * w_scale * scale_row, each step in float32 as numpy takes it."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    x[0, 1] = 0.0
    x[1, 2, :2] = [127.0, 0.5]  # scale 1: 0.5 lies half way and rounds to 0
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 8])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mm.onnx"))
    quantize_rowwise(tmp_path / "mm.onnx", tmp_path / "rowwise.onnx", external=False)
    session = ort.InferenceSession(str(tmp_path / "rowwise.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})

    peak = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.finfo(np.float32).tiny)
    scale = peak / np.float32(127)
    steps = np.round(x / scale).astype(np.int64)  # numpy rounds half to even
    w_q, w_scale = quantized_weight(weight)
    expected = ((steps @ w_q.astype(np.int64)).astype(np.float32) * w_scale) * scale
    assert steps[1, 2, 1] == 0 and not got[0, 1].any()
    assert got.shape == (2, 5, 8) and np.array_equal(got, expected)


@pytest.mark.heavy
def test_rowwise_answers_do_not_depend_on_batch_mates(quantized_pair, stress_texts):
    alone = scored(quantized_pair, "rowwise.onnx", stress_texts, [[i] for i in range(len(stress_texts))])
    rng = np.random.default_rng(7)
    for size in (2, 5, 17, 64):
        order = rng.permutation(len(stress_texts))
        groups = [order[i:i + size] for i in range(0, len(order), size)]
        batched = scored(quantized_pair, "rowwise.onnx", stress_texts, groups)
        assert np.array_equal(batched.argmax(axis=1), alone.argmax(axis=1)), size
        assert np.abs(batched - alone).max() <= INVARIANCE_ATOL, size


@pytest.mark.heavy
def test_per_tensor_int8_answers_do_depend_on_batch_mates(quantized_pair, stress_texts):
    """What the row-wise rung fixes, seen by the check quantize applies to every rung."""
    for model_file, invariant in (("per_tensor.onnx", False), ("rowwise.onnx", True)):
        model = OnnxClassifier(quantized_pair, model_file=model_file, target="cpu")
        alone = softmax(model.reading_logits(model.read(stress_texts), [[i] for i in range(len(stress_texts))]))
        figures = batch_invariance(model, stress_texts, alone, 32, INVARIANCE_ATOL)
        assert figures["batch_invariant"] is invariant, (model_file, figures)


@pytest.mark.heavy
def test_rowwise_stays_close_to_fp32(quantized_pair, stress_texts):
    groups = [[i] for i in range(len(stress_texts))]
    fp32 = scored(quantized_pair, "model.onnx", stress_texts, groups)
    int8 = scored(quantized_pair, "rowwise.onnx", stress_texts, groups)
    assert np.abs(int8 - fp32).max() < 0.02
    confident = np.abs(fp32[:, 1] - 0.5) > 0.01  # labels of near-ties may flip
    assert np.array_equal(int8.argmax(axis=1)[confident], fp32.argmax(axis=1)[confident])


def test_rowwise_refuses_a_graph_without_weights_to_quantize(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="no MatMul"):
        quantize_rowwise(tmp_path / "relu.onnx", tmp_path / "out.onnx", external=False)


def test_the_largest_products_the_rowwise_graph_can_form_are_exact_in_onnxruntime():
    """Every activation at its extreme (uint8 255 or 1: +-127 around the zero point 128) times 7-bit weights at
    +-63, summed over 384 inputs: onnxruntime's integer product equals numpy's exactly (no int16 saturation on AVX2's
    u8s8 kernel, none on VNNI/AMX), so the integer part of the model is the same on every x86 host: in
    MatMulInteger, and in MatMulIntegerToFloat (which the row-wise graph uses) at unit scales, as float32 (exact
    below 2^24)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = np.where(rng.random((8, 384)) < 0.5, ZERO_POINT + 127, ZERO_POINT - 127).astype(np.uint8)
    a[0] = ZERO_POINT + 127  # one row all at the top
    w = np.where(rng.random((384, 16)) < 0.5, WEIGHT_MAX, -WEIGHT_MAX).astype(np.int8)
    w[:, 0] = WEIGHT_MAX  # its product with row 0 is the largest sum there is
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "zp"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 384])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"a": a})
    expected = (a.astype(np.int64) - ZERO_POINT) @ w.astype(np.int64)
    assert expected[0, 0] == 384 * 127 * WEIGHT_MAX < 2**24
    assert np.array_equal(got, expected)

    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    ones = numpy_helper.from_array(np.ones(16, np.float32), "ones")
    graph = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "w", "one", "ones", "zp"], ["y"], domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "zp"), one, ones])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"a": a})
    assert np.array_equal(got, expected.astype(np.float32))


@pytest.mark.heavy
def test_the_service_answers_32_concurrent_clients_as_it_answers_one_text_at_a_time(quantized_pair, stress_texts,
                                                                                   tmp_path, monkeypatch):
    """A row-wise INT8 folder behind `tunegate serve`'s app, micro-batching on: the labels and probabilities 32
    concurrent clients get are those of each text scored alone (as the gate judges)."""
    import asyncio

    import httpx

    from tasks.runtime.settings import API_KEYS_ENV
    from tasks.serving.app import create_app
    from tests.test_serve_app import metric, serve_settings, serving

    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    folder = tmp_path / "served"
    shutil.copytree(quantized_pair, folder, ignore=shutil.ignore_patterns("model.onnx", "per_tensor.onnx"))
    (folder / "rowwise.onnx").rename(folder / "model.onnx")
    alone = scored(folder, "model.onnx", stress_texts, [[i] for i in range(len(stress_texts))])
    app = create_app(serve_settings(tmp_path, model=str(folder), max_batch_size=64, max_wait_ms=20,
                                    max_queue_texts=4096, max_queue_wait_ms=600_000), tmp_path)

    async def go() -> tuple[list[httpx.Response], str]:
        async with serving(app) as client:
            async def one_client(offset: int) -> list[httpx.Response]:
                return [await client.post("/v1/predict", json={"texts": [stress_texts[i]]})
                        for i in range(offset, len(stress_texts), 32)]
            per_client = await asyncio.gather(*(one_client(k) for k in range(32)))
            return [r for answers in per_client for r in answers], (await client.get("/metrics")).text

    answers, metrics = asyncio.run(asyncio.wait_for(go(), timeout=300))
    calls = metric(metrics, "tunegate_batch_texts_count")
    assert calls < len(stress_texts) / 2, "texts of concurrent clients shared model calls"
    assert [a.status_code for a in answers] == [200] * len(stress_texts)
    order = [i for k in range(32) for i in range(k, len(stress_texts), 32)]
    got = np.array([[a.json()["predictions"][0]["probabilities"][name] for name in ("negative", "positive")]
                    for a in answers])
    assert np.array_equal(got.argmax(axis=1), alone[order].argmax(axis=1))
    assert np.abs(got - alone[order]).max() <= INVARIANCE_ATOL


def test_static_rungs_use_weights_that_avx2s_u8s8_kernel_cannot_saturate(quantized_pair, stress_texts):
    """The static QDQ rungs quantize weights to 7 bits ([-64, 64]) as the row-wise rung does: uint8 activations
    (up to 255) times them, two products summed in int16 on AVX2, reach at most 2 x 255 x 64 = 32640 < 32767, so a
    static rung answers alike on AVX2, AVX-512 VNNI and AMX hosts."""
    import onnx
    from onnx import numpy_helper

    from tasks.core.config import parse_config
    from tests.conftest import tiny_params

    cfg = parse_config(tiny_params(quantized_pair)).quantize
    target = quantized_pair / "static.onnx"
    built = build_rung("static_minmax", quantized_pair / "model.onnx", quantized_pair / "model.onnx", target,
                       stress_texts[:16], cfg)
    assert "7-bit weights" in built["method"]
    model = onnx.load(str(target))
    initializers = {init.name: init for init in model.graph.initializer}
    weights = [numpy_helper.to_array(initializers[node.input[0]]) for node in model.graph.node
               if node.op_type == "DequantizeLinear" and node.input[0] in initializers]
    int8 = [w for w in weights if w.dtype == np.int8 and w.ndim == 2]
    assert int8, "no int8 weight matrix in the static rung"
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in int8) <= 64
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in int8) >= 63  # the 7 bits are used, not fewer
