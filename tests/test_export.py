"""export: ONNX with dynamic axes that matches PyTorch, servable without torch."""

import json

import numpy as np
import pytest

from tasks.export import ExportParityError, check_parity, parity
from tasks.onnx_model import OnnxClassifier


def test_export_stage_matches_pytorch_within_tolerance(staged_pipeline):
    cfg, paths = staged_pipeline
    report = json.loads((paths.stage_dir("export") / "parity.json").read_text())
    assert report["max_abs_diff"] <= cfg.export.parity_atol and report["argmax_agreement"] == 1.0
    assert report["rows"] == cfg.export.parity_rows


def test_exported_model_has_dynamic_batch_and_sequence_axes(staged_pipeline):
    cfg, paths = staged_pipeline
    model = OnnxClassifier(paths.onnx_dir)
    for texts in (["one"], ["short", "a much longer review that spans many more tokens than the first one"] * 3):
        logits = model.logits(texts, batch_size=len(texts))
        assert logits.shape == (len(texts), len(cfg.data.label_names)) and np.isfinite(logits).all()
    folder = {p.name for p in paths.onnx_dir.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json", "serving.json"} <= folder


def test_parity_check_fails_beyond_tolerance():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    report = parity(reference, reference + np.array([[0.0, 0.5], [0.0, 0.0]], dtype=np.float32))
    assert report == {"max_abs_diff": 0.5, "argmax_agreement": 1.0}
    check_parity(report, atol=0.6)
    with pytest.raises(ExportParityError, match="exceeds export.parity_atol"):
        check_parity(report, atol=0.1)
