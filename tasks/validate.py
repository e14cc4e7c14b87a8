"""validate: run the Great Expectations suites in expectations/ on the raw table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import DataConfig, PipelineConfig, ValidateConfig
from tasks.data import load_dataset
from tasks.io import DataFormatError, file_sha256, read_json, staged_dir, write_json, write_text
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, stage_task, write_result
from tasks.errors import TunegateError


class DataValidationError(TunegateError):
    """The data broke its contract; `report` holds every failing check with evidence."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(render_markdown(report))


def load_suite_spec(path: Path, data: DataConfig) -> dict[str, Any]:
    """Our reviewed suite JSON with '$text_column'/'$label_column' replaced by configured names."""
    names = {"$text_column": data.text_column, "$label_column": data.label_column}

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            return names.get(value, value)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    return resolve(read_json(path))


def suite_parameters(cfg: ValidateConfig, data: DataConfig) -> dict[str, Any]:
    """Values for the suite's {"$PARAMETER": name} placeholders."""
    return {
        "labels": list(data.labels),
        "min_rows": cfg.min_rows,
        "max_rows": cfg.max_rows,
        "min_text_chars": cfg.min_text_chars,
        "max_text_chars": cfg.max_text_chars,
    }


def run_suite(df: pd.DataFrame, spec: dict[str, Any], parameters: dict[str, Any], sample_rows: int) -> dict:
    """Validate df against the suite in an ephemeral GX context; return a plain report."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (5-7 s): only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("input").add_dataframe_asset("table")
    batch_definition = batch.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(
        gx.ExpectationSuite(name=spec["name"], expectations=[dict(e) for e in spec["expectations"]])
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=spec["name"], data=batch_definition, suite=suite)
    )
    outcome = definition.run(
        batch_parameters={"dataframe": df},
        expectation_parameters=parameters,
        result_format={"result_format": "COMPLETE"},
    )
    checks = [_check_record(r, df, sample_rows) for r in outcome.results]
    return {
        "suite": spec["name"],
        "success": bool(outcome.success),
        "rows": len(df),
        "columns": [str(c) for c in df.columns],
        "failed": sum(not c["success"] for c in checks),
        "checks": checks,
    }


def _check_record(result: Any, df: pd.DataFrame, sample_rows: int) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    record: dict[str, Any] = {
        "expectation": config.type,
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(result.success),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": details.get("unexpected_percent"),
        "observed_value": details.get("observed_value"),
    }
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        record["error"] = str(exception.get("exception_message")).splitlines()[0]
    bad_index = details.get("unexpected_index_list") or []
    if not result.success and bad_index and sample_rows:
        rows = df.loc[list(bad_index)[:sample_rows]]
        record["sample_rows"] = [
            {"row": int(i), **{str(k): _short(v) for k, v in row.items()}} for i, row in rows.iterrows()
        ]
    return record


def _short(value: Any, limit: int = 120) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def unreadable_report(source: Path, error: Exception) -> dict[str, Any]:
    """A report for input that could not even be read as a table."""
    return {
        "suite": "read",
        "success": False,
        "rows": 0,
        "columns": [],
        "failed": 1,
        "checks": [{"expectation": "readable_table", "column": None, "kwargs": {"path": str(source)},
                    "success": False, "error": str(error)}],
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: one line per check, failing ones with sample rows."""
    verdict = "PASSED" if report["success"] else f"FAILED ({report['failed']} of {len(report['checks'])} checks)"
    lines = [f"# Data validation: {verdict}", "",
             f"Suite `{report['suite']}` on {report['rows']} rows; columns: {', '.join(report['columns']) or '-'}", "",
             "| check | column | result | evidence |", "|---|---|---|---|"]
    for check in report["checks"]:
        lines.append(f"| {check['expectation']} | {check['column'] or ''} | "
                     f"{'pass' if check['success'] else 'FAIL'} | {_evidence(check)} |")
    for check in report["checks"]:
        if check.get("sample_rows"):
            lines += ["", f"Sample bad rows for {check['expectation']} ({check['column']}):", ""]
            lines += [f"- {row}" for row in check["sample_rows"]]
    return "\n".join(lines) + "\n"


def _evidence(check: dict[str, Any]) -> str:
    if check.get("error"):
        return f"error: {check['error']}".replace("|", "/")
    if check.get("unexpected_count"):
        return f"{check['unexpected_count']} bad rows ({check['unexpected_percent']:.2f}%)"
    if check.get("observed_value") is not None:
        return f"observed {check['observed_value']}".replace("|", "/")
    return ""


def validate_table(root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Read the configured data and run the suite; never raises for bad data, only reports it.

    The report names the bytes it judged (`data_sha256`), so a later stage can tell whether it
    still speaks for the data on disk.
    """
    source = root / cfg.data.path
    try:
        df = load_dataset(root, cfg.data)
    except DataFormatError as exc:
        return unreadable_report(source, exc)
    spec = load_suite_spec(root / cfg.validate_.suite, cfg.data)
    params = suite_parameters(cfg.validate_, cfg.data)
    return {**run_suite(df, spec, params, cfg.validate_.sample_bad_rows), "data_sha256": file_sha256(source)}


@stage_task("validate")
def validate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Validate the raw data; write report.json/.md; raise DataValidationError on failure."""
    report = validate_table(paths.root, cfg)
    key = f"{report['rows']} rows, {len(report['checks']) - report['failed']}/{len(report['checks'])} checks pass"
    with staged_dir(paths.stage_dir("validate")) as out:
        write_json(out / "report.json", report)
        write_text(out / "report.md", render_markdown(report))
        result = write_result(out, StageResult(stage="validate", key_figure=key, success=report["success"]))
    if not report["success"]:
        raise DataValidationError(report)
    return result


def require_validated(paths: ArtifactPaths, data_path: Path) -> None:
    """Refuse to go on unless the last validation passed, and was of the data now at data_path."""
    path = paths.validation_report
    if not path.is_file():
        raise DataValidationError(unreadable_report(
            path, FileNotFoundError("no validation report: run the validate stage first")))
    report = read_json(path)
    if not report.get("success"):
        raise DataValidationError(report)
    if report.get("data_sha256") != file_sha256(data_path):
        raise DataValidationError(unreadable_report(data_path, ValueError(
            "the data changed since it was last validated: run the validate stage first")))
