"""validate: the raw-data contract (GX suite in expectations/) and drift against a reference version."""

from __future__ import annotations

from tasks.contracts.raw import validate_table
from tasks.contracts.report import DataValidationError, write_failure_report, write_reports
from tasks.core.config import PipelineConfig
from tasks.core.io import staged_dir
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult, stage_task, write_result

__all__ = ["DataValidationError", "validate"]


@stage_task("validate")
def validate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Validate the raw data and its drift; write report.json/.md/.html; raise DataValidationError on failure.

    A failure leaves artifacts/validate as it was (its report goes to artifacts/_failed/validate).
    """
    report = validate_table(paths.root, cfg)
    if not report["success"]:
        folder = write_failure_report(paths, "validate", report)
        raise DataValidationError(report, where=folder / "report.md")
    passed = sum(c["success"] for c in report["checks"])
    key = f"{report['rows']} rows, {passed}/{len(report['checks'])} checks pass, {report['warnings']} warning(s)"
    with staged_dir(paths.stage_dir("validate")) as out:
        write_reports(out, report)
        return write_result(out, StageResult(stage="validate", key_figure=key, success=True))
