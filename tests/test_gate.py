"""gate: PROMOTE only when every threshold holds; every check recorded with value and threshold."""

import json

from tasks.core.config import GateConfig
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


def test_gate_stage_writes_decision_and_report(staged_pipeline):
    _, paths = staged_pipeline
    decision = json.loads(paths.decision.read_text())
    assert decision["decision"] in (PROMOTE, REJECT) and len(decision["checks"]) == 3
    assert decision["candidate"]["model"] == "artifacts/quantize/onnx/model.onnx"
    assert decision["candidate"]["precision"] == "dynamic_per_tensor"
    assert (paths.stage_dir("gate") / "report.md").read_text().startswith(f"# Gate: {decision['decision']}")
