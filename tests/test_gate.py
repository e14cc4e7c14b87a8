"""gate: PROMOTE only when every threshold holds; every check recorded with value and threshold."""

import json

from tasks.core.config import GateConfig
from tasks.core.io import file_sha256
from tasks.gate import PROMOTE, REJECT, decide, render_report

GATE = GateConfig(min_accuracy=0.8, min_macro_f1=0.75, max_quantization_drop=0.01)


def test_gate_promotes_when_all_checks_pass():
    decision = decide({"accuracy": 0.85, "macro_f1": 0.84}, {"accuracy_drop": 0.004}, GATE)
    assert decision["decision"] == PROMOTE and all(c["passed"] for c in decision["checks"])


def test_gate_rejects_and_names_each_failed_check():
    decision = decide({"accuracy": 0.79, "macro_f1": 0.80}, {"accuracy_drop": 0.02}, GATE)
    assert decision["decision"] == REJECT
    failed = {c["check"]: c for c in decision["checks"] if not c["passed"]}
    assert set(failed) == {"test accuracy", "quantized accuracy drop"}
    assert failed["test accuracy"] == {"check": "test accuracy", "value": 0.79, "threshold": 0.8,
                                       "rule": ">=", "passed": False}
    assert "| test accuracy | 0.7900 | >= | 0.8000 | FAIL |" in render_report(decision)


def test_gate_thresholds_are_inclusive():
    decision = decide({"accuracy": 0.8, "macro_f1": 0.75}, {"accuracy_drop": 0.01}, GATE)
    assert decision["decision"] == PROMOTE


def test_gate_stage_rejects_the_tiny_random_model_and_names_the_failed_checks(staged_pipeline):
    cfg, paths = staged_pipeline
    metrics = json.loads(paths.metrics.read_text())
    # The setup: a random 2-layer model scores far below the shipping bar, and the first quantization
    # rung is kept whatever it does (tiny params) while gate keeps the real bar on its drop.
    assert metrics["accuracy"] < cfg.gate.min_accuracy and metrics["macro_f1"] < cfg.gate.min_macro_f1
    quantization = json.loads(paths.quantization_report.read_text())
    decision = json.loads(paths.decision.read_text())
    assert decision["decision"] == REJECT
    failed = {c["check"] for c in decision["checks"] if not c["passed"]}
    expected = {"test accuracy", "test macro-F1"} | (
        {"quantized accuracy drop"} if quantization["accuracy_drop"] > cfg.gate.max_quantization_drop else set())
    assert failed == expected and len(decision["checks"]) == 3
    stamp = json.loads(paths.train_stamp.read_text())
    assert decision["candidate"] == {"model": "artifacts/quantize/onnx/model.onnx", "precision": "dynamic_per_tensor",
                                     "sha256": file_sha256(paths.int8_dir / "model.onnx"),
                                     "train_run": stamp["run_fingerprint"]}
    report = (paths.stage_dir("gate") / "report.md").read_text()
    assert report.startswith("# Gate: REJECT") and stamp["run_fingerprint"] in report
    assert json.loads(paths.result("gate").read_text())["key_figure"].startswith("REJECT (failed: test accuracy")
