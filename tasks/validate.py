"""validate: run the Great Expectations suites in expectations/ on the raw table."""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import DataConfig, PipelineConfig, ValidateConfig
from tasks.data import load_dataset
from tasks.io import DataFormatError, file_sha256, read_json, staged_dir, write_json, write_text
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, stage_task, write_result
from tasks.text import normalise_text
from tasks.errors import TunegateError


class DataValidationError(TunegateError):
    """The data broke its contract; `report` holds every failing check with evidence."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(render_markdown(report))


UNIQUENESS_CHECKS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_column_values_to_be_unique")

# Columns computed before validation so GX's stock expectations can check them row by row.
DERIVED = {"$text_is_string": "__text_is_string", "$normalised_text": "__normalised_text",
           "$class_share": "__class_share"}


def with_derived_columns(df: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """df plus the derived columns the suite names (only those whose source columns exist)."""
    derived = {}
    if data.text_column in df.columns:
        texts = df[data.text_column]
        derived[DERIVED["$text_is_string"]] = texts.map(lambda v: isinstance(v, str) or bool(pd.isna(v)))
        derived[DERIVED["$normalised_text"]] = texts.map(lambda v: normalise_text(v) if isinstance(v, str) else v)
    if data.label_column in df.columns:
        labels = df[data.label_column]
        derived[DERIVED["$class_share"]] = labels.map(labels.value_counts(normalize=True)).astype(float)
    return df.assign(**derived)


def load_suite_spec(path: Path, data: DataConfig) -> dict[str, Any]:
    """Our reviewed suite JSON with '$text_column'/'$label_column' (and derived names) resolved."""
    names = {"$text_column": data.text_column, "$label_column": data.label_column, **DERIVED}

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
        "min_clean_share": cfg.min_clean_share,
        "min_unique_share": cfg.min_unique_share,
        "min_class_share": cfg.min_class_share,
        "max_class_share": cfg.max_class_share,
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
    failed = [c for c in checks if not c["success"]]
    errors = sum(c["severity"] == "error" for c in failed)
    return {
        "suite": spec["name"],
        "success": errors == 0,  # failed warnings are reported, not fatal
        "rows": len(df),
        "columns": [str(c) for c in df.columns if not str(c).startswith("__")],
        "failed": errors,
        "warnings": len(failed) - errors,
        "checks": checks,
    }


def _check_record(result: Any, df: pd.DataFrame, sample_rows: int) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    record: dict[str, Any] = {
        "expectation": config.type,
        "severity": (config.meta or {}).get("severity", "error"),
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
    if not result.success and config.type in UNIQUENESS_CHECKS and record["column"] in df.columns:
        # An aggregate check lists no bad rows; the duplicated ones are its evidence.
        bad_index = df.index[df[record["column"]].duplicated(keep=False)].tolist()
    if not result.success and bad_index and sample_rows:
        rows = df.loc[list(bad_index)[:sample_rows]]
        record["sample_rows"] = [
            {"row": int(i), **{str(k): _short(v) for k, v in row.items() if not str(k).startswith("__")}}
            for i, row in rows.iterrows()
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
        "warnings": 0,
        "checks": [{"expectation": "readable_table", "severity": "error", "column": None,
                    "kwargs": {"path": str(source)}, "success": False, "error": str(error)}],
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: one line per check, failing ones with sample rows."""
    lines = [f"# Data validation: {verdict(report)}", "",
             f"Suite `{report['suite']}` on {report['rows']} rows; columns: {', '.join(report['columns']) or '-'}", "",
             "| check | column | severity | result | evidence |", "|---|---|---|---|---|"]
    for check in report["checks"]:
        lines.append(f"| {check['expectation']} | {check['column'] or ''} | {check['severity']} | "
                     f"{outcome_word(check)} | {evidence(check)} |")
    for check in report["checks"]:
        if check.get("sample_rows"):
            lines += ["", f"Sample bad rows for {check['expectation']} ({check['column']}):", ""]
            lines += [f"- {row}" for row in check["sample_rows"]]
    return "\n".join(lines) + "\n"


def verdict(report: dict[str, Any]) -> str:
    if not report["success"]:
        return f"FAILED ({report['failed']} of {len(report['checks'])} checks)"
    return "PASSED" + (f" with {report['warnings']} warning(s)" if report["warnings"] else "")


def outcome_word(check: dict[str, Any]) -> str:
    if check["success"]:
        return "pass"
    return "FAIL" if check["severity"] == "error" else "warn"


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline style, no scripts, everything escaped)."""
    colours = {"pass": "#e6f4ea", "warn": "#fff4ce", "FAIL": "#fde7e9"}
    rows = "".join(
        f"<tr style='background:{colours[outcome_word(c)]}'><td>{escape(c['expectation'])}</td>"
        f"<td>{escape(str(c['column'] or ''))}</td><td>{c['severity']}</td><td>{outcome_word(c)}</td>"
        f"<td>{escape(evidence(c))}</td></tr>"
        for c in report["checks"])
    samples = "".join(
        f"<h3>Sample bad rows: {escape(c['expectation'])} ({escape(str(c['column']))})</h3><ul>"
        + "".join(f"<li><code>{escape(json.dumps(r, ensure_ascii=False, default=str))}</code></li>"
                  for r in c["sample_rows"]) + "</ul>"
        for c in report["checks"] if c.get("sample_rows"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Data validation</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Data validation: {escape(verdict(report))}</h1>"
        f"<p>Suite <code>{escape(report['suite'])}</code> on {report['rows']} rows; columns: "
        f"{escape(', '.join(report['columns']) or '-')}</p>"
        f"<table><tr><th>check</th><th>column</th><th>severity</th><th>result</th><th>evidence</th></tr>{rows}"
        f"</table>{samples}</body></html>\n")


def evidence(check: dict[str, Any]) -> str:
    if check.get("error"):
        return f"error: {check['error']}".replace("|", "/")
    if check.get("unexpected_count"):
        return f"{check['unexpected_count']} bad rows ({check['unexpected_percent']:.2f}%)"
    if check.get("observed_value") is not None:
        return f"observed {check['observed_value']}".replace("|", "/")
    return ""


def write_reports(folder: Path, report: dict[str, Any]) -> None:
    """report.json (machines), report.md (people), report.html (a page to share)."""
    write_json(folder / "report.json", report)
    write_text(folder / "report.md", render_markdown(report))
    write_text(folder / "report.html", render_html(report))


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
    return {**check_table(df, root, cfg), "data_sha256": file_sha256(source)}


def check_table(df: pd.DataFrame, root: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Run the configured suite on an in-memory table."""
    spec = load_suite_spec(root / cfg.validate_.suite, cfg.data)
    params = suite_parameters(cfg.validate_, cfg.data)
    return run_suite(with_derived_columns(df, cfg.data), spec, params, cfg.validate_.sample_bad_rows)


@stage_task("validate")
def validate(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Validate the raw data; write report.json/.md; raise DataValidationError on failure."""
    report = validate_table(paths.root, cfg)
    passed = sum(c["success"] for c in report["checks"])
    key = f"{report['rows']} rows, {passed}/{len(report['checks'])} checks pass, {report['warnings']} warning(s)"
    with staged_dir(paths.stage_dir("validate")) as out:
        write_reports(out, report)
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
