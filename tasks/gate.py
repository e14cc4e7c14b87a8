"""gate: PROMOTE or REJECT the candidate from its measured figures and the thresholds in params."""

from __future__ import annotations

from typing import Any

from tasks.core.config import GateConfig, PipelineConfig
from tasks.core.io import file_sha256, read_json, staged_dir, write_json, write_text
from tasks.serving.files import MODEL_FILE
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult, stage_task, write_result

PROMOTE, REJECT = "PROMOTE", "REJECT"


def check(name: str, value: float, threshold: float, at_least: bool) -> dict[str, Any]:
    passed = value >= threshold if at_least else value <= threshold
    return {"check": name, "value": value, "threshold": threshold,
            "rule": ">=" if at_least else "<=", "passed": bool(passed)}


def decide(metrics: dict[str, Any], quantization: dict[str, Any], cfg: GateConfig) -> dict[str, Any]:
    """Every check with value, threshold and verdict; PROMOTE only if all pass."""
    checks = [
        check("test accuracy", metrics["accuracy"], cfg.min_accuracy, at_least=True),
        check("test macro-F1", metrics["macro_f1"], cfg.min_macro_f1, at_least=True),
        check("quantized accuracy drop", quantization["accuracy_drop"], cfg.max_quantization_drop, at_least=False),
    ]
    return {"decision": PROMOTE if all(c["passed"] for c in checks) else REJECT, "checks": checks}


def render_report(decision: dict[str, Any]) -> str:
    lines = [f"# Gate: {decision['decision']}", "", "| check | value | rule | threshold | result |",
             "|---|---|---|---|---|"]
    for c in decision["checks"]:
        lines.append(f"| {c['check']} | {c['value']:.4f} | {c['rule']} | {c['threshold']:.4f} | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    candidate = decision.get("candidate", {})
    if candidate:
        lines += ["", f"Candidate: `{candidate['model']}` ({candidate['precision']}, "
                      f"sha256 {candidate['sha256'][:12]}…), training run {candidate['train_run']} "
                      "(its stamp: `artifacts/train/stamp.json`)."]
    return "\n".join(lines) + "\n"


@stage_task("gate")
def gate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Write decision.json and report.md; never moves the production pointer itself."""
    quantization = read_json(paths.quantization_report)
    decision = decide(read_json(paths.metrics), quantization, cfg.gate)
    shipped = paths.int8_dir / MODEL_FILE
    decision["candidate"] = {
        "model": str(shipped.relative_to(paths.root)),
        "precision": quantization["chosen"],
        "sha256": file_sha256(shipped),
        # The run's fingerprint, not a git SHA: the commit holding dvc.lock is made after the run, so a
        # SHA here would differ between the reference run and every clone that repeats it.
        "train_run": read_json(paths.train_stamp)["run_fingerprint"],
    }
    failed = [c["check"] for c in decision["checks"] if not c["passed"]]
    key = decision["decision"] + (f" (failed: {', '.join(failed)})" if failed else "")
    with staged_dir(paths.stage_dir("gate")) as out:
        write_json(out / "decision.json", decision)
        write_text(out / "report.md", render_report(decision))
        return write_result(out, StageResult(stage="gate", key_figure=key, decision=decision["decision"]))
