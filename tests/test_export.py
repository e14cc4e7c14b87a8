"""export: ONNX (raw and optimised) with dynamic axes that matches PyTorch, servable without torch."""

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from tasks.core.paths import ArtifactPaths
from tasks.export import (ExportParityError, check_fp16_parity, check_parity, convert_fp16, export, export_onnx,
                          fp16_parity, fp16_parity_report, fp32_parity, optimise_onnx, parity, uses_external_data)
from tasks.runtime import onnx_model
from tasks.runtime.files import FP16_FILE, MODEL_FILE, OPTIMIZED_FILE
from tasks.runtime.onnx_model import OnnxClassifier, copy_model, inference_session
from tasks.training.modeling import load_classifier, torch_logits


def write_student(teacher_dir: Path, target: Path, layers: int = 1, flip: bool = False) -> Path:
    """A stand-in for distill's student: the teacher cut to its first `layers` layers (flip: the classifier head
    negated, so it disagrees with the teacher on every row), saved as a plain HF model folder."""
    model, tokenizer = load_classifier(teacher_dir, torch.device("cpu"))
    model.base_model.encoder.layer = model.base_model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    if flip:
        with torch.no_grad():
            model.classifier.weight.neg_()
            model.classifier.bias.neg_()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def student_project(staged: tuple, root: Path, **student: Any) -> ArtifactPaths:
    """A copy of the staged run (prepare, train, evaluate) at `root` with a student (write_student) at
    artifacts/distill/student, then exported: the teacher and the student."""
    cfg, paths = staged
    copy = ArtifactPaths(root)
    for stage in ("prepare", "train", "evaluate"):
        shutil.copytree(paths.stage_dir(stage), copy.stage_dir(stage))
    write_student(paths.model_dir, copy.student_dir, **student)
    export.fn(cfg, copy)
    return copy


def test_export_stage_matches_pytorch_for_raw_and_optimised_graphs(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads((paths.stage_dir("export") / "parity.json").read_text())
    assert set(report["models"]) == {MODEL_FILE, OPTIMIZED_FILE} and report["opset"] >= 17
    for figures in report["models"].values():
        assert figures["max_abs_diff"] <= cfg.export.parity_atol and figures["argmax_agreement"] == 1.0
    assert report["optimisation"]["fused_operators"].get("Attention") == 2  # one per layer of the tiny BERT
    assert not report["external_data"]


@pytest.mark.heavy
def test_export_serves_the_rule_train_chose_and_checks_parity_reading_by_it(staged_pipeline, tmp_path):
    from tasks.training.reading import chosen_long_text, long_text_path, write_long_text

    cfg, paths = staged_pipeline
    assert json.loads((paths.onnx_dir / "serving.json").read_text())["long_text"] == chosen_long_text(paths)
    elsewhere = ArtifactPaths(tmp_path)
    for stage in ("prepare", "train"):
        shutil.copytree(paths.stage_dir(stage), elsewhere.stage_dir(stage))
    rule = {"rule": "window", "stride": 8, "aggregate": "max_confidence"}  # as if dev had chosen it
    write_long_text(elsewhere.stage_dir("train"), {**json.loads(long_text_path(paths).read_text()), "chosen": rule})
    export.fn(cfg, elsewhere)  # raises ExportParityError unless PyTorch and both ONNX graphs agree reading by it
    for name in (MODEL_FILE, OPTIMIZED_FILE):
        served = OnnxClassifier(elsewhere.onnx_dir, model_file=name)
        assert served.long_text == rule
    texts = list(pd.read_parquet(paths.split("test"))["text"][: cfg.export.parity_rows])
    assert len(served.read(texts).windows) > len(texts), "parity was checked on texts cut into windows"


@pytest.mark.heavy
def test_export_stage_exports_the_student_beside_the_teacher_with_its_own_parity(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    copy = student_project(staged_pipeline, tmp_path)
    report = json.loads((copy.stage_dir("export") / "parity.json").read_text())
    student = report["student"]
    assert set(student["models"]) == {MODEL_FILE, OPTIMIZED_FILE}
    for figures in [*student["models"].values(), *report["models"].values()]:
        assert figures["max_abs_diff"] <= cfg.export.parity_atol and figures["argmax_agreement"] == 1.0
    assert student["optimisation"]["fused_operators"].get("Attention") == 1  # the one layer the student kept
    # A served folder like the teacher's, read by the same long_text rule, whose logits are the student's.
    served = OnnxClassifier(copy.student_onnx_dir)
    teacher_serving = json.loads((copy.onnx_dir / "serving.json").read_text())
    assert served.long_text == OnnxClassifier(copy.onnx_dir).long_text == teacher_serving["long_text"]
    assert json.loads((copy.student_onnx_dir / "config.json").read_text())["num_hidden_layers"] == 1
    texts = list(pd.read_parquet(paths.split("test"))["text"][:8])
    model, tokenizer = load_classifier(copy.student_dir, torch.device("cpu"))
    expected = torch_logits(model, tokenizer, texts, cfg.train.max_length, 8, torch.device("cpu"),
                            long_text=served.long_text)
    np.testing.assert_allclose(served.logits(texts, 8), expected, atol=cfg.export.parity_atol)
    assert "student exported too" in json.loads(copy.result("export").read_text())["key_figure"]


@pytest.mark.heavy
def test_export_without_a_student_records_why(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    copy = ArtifactPaths(tmp_path)
    for stage in ("prepare", "train"):
        shutil.copytree(paths.stage_dir(stage), copy.stage_dir(stage))
    copy.stage_dir("distill").mkdir(parents=True)
    (copy.stage_dir("distill") / "distill.json").write_text(json.dumps({"enabled": False}))
    export.fn(cfg, copy)
    report = json.loads((copy.stage_dir("export") / "parity.json").read_text())
    assert report["student"] == {"skipped": "distill.enabled is false: no student was built"}
    assert not copy.student_onnx_dir.exists() and (copy.onnx_dir / MODEL_FILE).is_file()


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


@pytest.mark.heavy
def test_sessions_on_one_shared_thread_pool_give_the_same_logits(staged_pipeline, tmp_path):
    _, paths = staged_pipeline
    texts = ["a gripping film", "dull and far too long", "fine"]
    expected = OnnxClassifier(paths.int8_dir).logits(texts, batch_size=2)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from tasks.runtime.onnx_model import OnnxClassifier, share_one_thread_pool\n"
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


def test_export_hands_the_model_back_in_eval_mode(tiny_model_dir, tmp_path):
    """The exporter restores the mode of the module it is given; a wrapper built in training mode would hand the
    caller's model back with dropout on, answering each call differently."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.core.config import parse_config
    from tests.conftest import tiny_params

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    export_onnx(model, tokenizer, tmp_path / "served", 16, parse_config(tiny_params(tiny_model_dir)).export)
    assert not any(module.training for module in model.modules())
    batch = tokenizer(["a short example", "and a second, longer one"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, model(**batch).logits)


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


@pytest.mark.heavy
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


# --- provider choice on a (simulated) GPU host -------------------------------------------------------------

def test_fp32_parity_runs_on_cpu_only_when_the_target_is_cpu_even_where_cuda_is_offered(staged_pipeline, gpu_host):
    cfg, paths = staged_pipeline
    texts = ["a gripping film", "dull and far too long"]
    reference = OnnxClassifier(paths.onnx_dir, MODEL_FILE, target="cpu").logits(texts, 2)
    gpu_host.sessions.requests.clear()
    models = fp32_parity(paths.onnx_dir, texts, reference, cfg)  # cfg.export.target is cpu
    assert gpu_host.sessions.requests == [[onnx_model.CPU], [onnx_model.CPU]]
    assert all(m["providers"] == [onnx_model.CPU] for m in models.values())


def test_cuda_sessions_turn_tf32_off_and_preload_the_cuda_libraries(staged_pipeline, gpu_host):
    _, paths = staged_pipeline
    model = OnnxClassifier(paths.onnx_dir, MODEL_FILE, target="cuda")
    assert gpu_host.sessions.requests == [[(onnx_model.CUDA, {"use_tf32": "0"}), onnx_model.CPU]]
    assert gpu_host.preloads == [True] and model.providers[0] == onnx_model.CUDA


def test_a_required_cuda_provider_that_did_not_load_is_an_error_naming_the_fix(staged_pipeline, gpu_host):
    _, paths = staged_pipeline
    gpu_host.sessions.cuda_loads = False  # e.g. a torch-free process without the CUDA 13 libraries
    with pytest.raises(onnx_model.CudaProviderError, match=r"onnxruntime-gpu\[cuda,cudnn\].*LD_LIBRARY_PATH"):
        OnnxClassifier(paths.onnx_dir, MODEL_FILE, target="cuda")


def test_a_preferred_cuda_provider_that_did_not_load_warns_once_and_serves_on_cpu(staged_pipeline, gpu_host,
                                                                                  caplog):
    _, paths = staged_pipeline
    gpu_host.sessions.cuda_loads = False
    with caplog.at_level("WARNING", logger=onnx_model.__name__):
        first = OnnxClassifier(paths.onnx_dir, MODEL_FILE, target="auto")
        OnnxClassifier(paths.onnx_dir, OPTIMIZED_FILE, target="auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "onnxruntime-gpu[cuda,cudnn]" in warnings[0] and "\n" not in warnings[0]
    assert first.providers == [onnx_model.CPU] and first.logits(["fine"], 1).shape == (1, 2)


def test_fp16_parity_needs_the_cuda_provider_the_session_got_not_the_one_offered(staged_pipeline, gpu_host,
                                                                                 tmp_path):
    cfg, paths = staged_pipeline
    shutil.copytree(paths.onnx_dir, tmp_path / "onnx")
    convert_fp16(paths.onnx_dir / OPTIMIZED_FILE, tmp_path / "onnx" / FP16_FILE, external=False)
    gpu_host.sessions.cuda_loads = False  # offered, but the session fell back to CPU
    reference = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(onnx_model.CudaProviderError, match="did not load"):
        fp16_parity(tmp_path / "onnx", ["fine"], reference, cfg)


def test_cuda_is_not_required_of_a_host_without_a_cuda_device(staged_pipeline, monkeypatch):
    _, paths = staged_pipeline
    monkeypatch.setattr(ort, "get_available_providers", lambda: [onnx_model.CUDA, onnx_model.CPU])
    monkeypatch.setattr(onnx_model, "cuda_device_count", lambda: 0)  # onnxruntime-gpu, no GPU given
    assert onnx_model.providers_for("auto") == [onnx_model.CPU]
    with pytest.raises(onnx_model.CudaProviderError, match="CUDA devices: 0"):
        OnnxClassifier(paths.onnx_dir, MODEL_FILE, target="cuda")


def test_cuda_device_count_is_zero_without_a_driver_and_never_raises(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    class FailingDriver:
        def cuInit(self, flags):
            return 100  # CUDA_ERROR_NO_DEVICE

    onnx_model.cuda_device_count.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert onnx_model.cuda_device_count() == 0
    onnx_model.cuda_device_count.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: FailingDriver())
    assert onnx_model.cuda_device_count() == 0
    onnx_model.cuda_device_count.cache_clear()


def test_fp16_parity_judges_argmax_only_on_rows_with_a_clear_fp32_margin():
    reference = np.array([[0.0, 1.0], [0.50, 0.51], [2.0, 0.0]], dtype=np.float32)
    close_flip = reference + np.array([[0.005, 0.0], [0.015, 0.0], [0.0, 0.01]], dtype=np.float32)
    report = fp16_parity_report(reference, close_flip, atol=0.02)
    assert report["decisive_rows"] == 2 and report["decisive_agreement"] == 1.0
    assert report["close_rows"] == 1 and report["close_rows_flipped"] == 1
    check_fp16_parity(FP16_FILE, report)  # the flip of a 0.01-margin row is FP16 rounding, not an error
    with pytest.raises(ExportParityError, match="fp16_atol"):
        check_fp16_parity(FP16_FILE, fp16_parity_report(reference, reference + 0.03, atol=0.02))
    narrow = np.array([[0.0, 0.03], [2.0, 0.0]])  # a margin just over the tolerance: differences within it
    flipped = fp16_parity_report(narrow, np.array([[0.02, 0.01], [2.0, 0.0]]), atol=0.02)  # can still flip it
    assert flipped["max_abs_diff"] <= 0.02
    with pytest.raises(ExportParityError, match="argmax agreement 0.5000 on the 2 rows"):
        check_fp16_parity(FP16_FILE, flipped)
