"""export: ONNX (raw and optimised) with dynamic axes that matches PyTorch, servable without torch."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from tasks.export import (ExportParityError, check_parity, convert_fp16, export_onnx, optimise_onnx, parity,
                          uses_external_data)
from tasks.training.modeling import load_classifier
from tasks.serving.files import MODEL_FILE, OPTIMIZED_FILE
from tasks.serving.onnx_model import OnnxClassifier, copy_model, inference_session


def test_export_stage_matches_pytorch_for_raw_and_optimised_graphs(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads((paths.stage_dir("export") / "parity.json").read_text())
    assert set(report["models"]) == {MODEL_FILE, OPTIMIZED_FILE} and report["opset"] >= 17
    for figures in report["models"].values():
        assert figures["max_abs_diff"] <= cfg.export.parity_atol and figures["argmax_agreement"] == 1.0
    assert report["optimisation"]["fused_operators"].get("Attention") == 2  # one per layer of the tiny BERT
    assert not report["external_data"]


def test_cpu_sessions_keep_layer_norm_and_add_apart(staged_pipeline, tmp_path):
    """onnxruntime's CPU SkipLayerNormalization is slower than LayerNormalization + Add: neither the
    saved graph nor what a CPU session makes of it at load time may hold one."""
    import onnxruntime as ort

    _, paths = staged_pipeline
    saved = onnx.load(str(paths.onnx_dir / OPTIMIZED_FILE))
    loaded_path = tmp_path / "as_loaded.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(loaded_path)
    inference_session(paths.onnx_dir / OPTIMIZED_FILE, options, providers=["CPUExecutionProvider"])
    for graph in (saved.graph, onnx.load(str(loaded_path)).graph):
        ops = {node.op_type for node in graph.node}
        assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops and "Attention" in ops


def test_sessions_on_one_shared_thread_pool_give_the_same_logits(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    texts = ["a gripping film", "dull and far too long", "fine"]
    expected = OnnxClassifier(paths.int8_dir).logits(texts, batch_size=2)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from tasks.serving.onnx_model import OnnxClassifier, share_one_thread_pool\n"
        "share_one_thread_pool(2)\n"
        "fp32, int8 = OnnxClassifier(Path(sys.argv[1])), OnnxClassifier(Path(sys.argv[2]))\n"
        "fp32.logits(sys.argv[4:], 2)\n"
        "np.save(sys.argv[3], int8.logits(sys.argv[4:], 2))\n"
        "try:\n"
        "    share_one_thread_pool(2)\n"
        "except RuntimeError:\n"
        "    print('late call refused')\n"
    )
    out = tmp_path / "logits.npy"
    done = subprocess.run([sys.executable, "-c", script, str(paths.onnx_dir), str(paths.int8_dir), str(out), *texts],
                          capture_output=True, text=True, check=True)
    assert "late call refused" in done.stdout
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_exported_models_have_dynamic_batch_and_sequence_axes(staged_pipeline):
    cfg, paths = staged_pipeline
    for model_file in (MODEL_FILE, OPTIMIZED_FILE):
        model = OnnxClassifier(paths.onnx_dir, model_file=model_file)
        for texts in (["one"], ["short", "a much longer review that spans many more tokens than the first"] * 3):
            logits = model.logits(texts, batch_size=len(texts))
            assert logits.shape == (len(texts), len(cfg.data.label_names)) and np.isfinite(logits).all()
    folder = {p.name for p in paths.onnx_dir.iterdir()}
    assert {MODEL_FILE, OPTIMIZED_FILE, "tokenizer.json", "config.json", "serving.json"} <= folder
    assert OnnxClassifier(paths.onnx_dir).model_file == OPTIMIZED_FILE, "serving defaults to the optimised graph"


def test_large_models_use_external_data_and_still_run(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    model, tokenizer = load_classifier(paths.model_dir, torch.device("cpu"), attn_implementation="eager")
    small_limit = cfg.export.model_copy(update={"external_data_mb": 0})  # as if the model were over the limit
    path = export_onnx(model, tokenizer, tmp_path, cfg.train.max_length, small_limit)
    assert (tmp_path / "model.onnx.data").stat().st_size > path.stat().st_size
    assert uses_external_data(path, small_limit.external_data_mb)
    optimise_onnx(path, tmp_path / OPTIMIZED_FILE, model.config, external=True)
    assert (tmp_path / f"{OPTIMIZED_FILE}.data").is_file()
    text = ["external weights load fine"]
    expected = OnnxClassifier(paths.onnx_dir, MODEL_FILE).logits(text, 1)
    assert np.allclose(OnnxClassifier(tmp_path, MODEL_FILE).logits(text, 1), expected, atol=1e-5)
    copy_model(path, tmp_path / "renamed.onnx")  # the copy must name its own weights file
    (tmp_path / "model.onnx.data").unlink()
    assert (tmp_path / "renamed.onnx.data").is_file()
    assert np.allclose(OnnxClassifier(tmp_path, "renamed.onnx").logits(text, 1), expected, atol=1e-5)


def test_fp16_conversion_keeps_io_types_and_halves_weights(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    target = tmp_path / "model.fp16.onnx"
    convert_fp16(paths.onnx_dir / OPTIMIZED_FILE, target, external=False)
    model = onnx.load(str(target))
    float_weights = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_weights if len(i.dims) == 2)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert target.stat().st_size < 0.6 * (paths.onnx_dir / OPTIMIZED_FILE).stat().st_size


def test_parity_check_fails_beyond_tolerance_or_on_a_flipped_prediction():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    report = parity(reference, reference + np.array([[0.0, 0.5], [0.0, 0.0]], dtype=np.float32))
    assert report == {"max_abs_diff": 0.5, "argmax_agreement": 1.0}
    check_parity("model.onnx", report, atol=0.6)
    with pytest.raises(ExportParityError, match="parity_atol"):
        check_parity("model.onnx", report, atol=0.1)
    flipped = parity(reference, np.array([[1.0, 0.0], [2.0, 0.0]], dtype=np.float32))
    with pytest.raises(ExportParityError, match="argmax agreement 0.5"):
        check_parity("model.onnx", flipped, atol=10.0)
