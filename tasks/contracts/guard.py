"""The guard later stages run first: the last validation passed, and was of the data on disk now."""

from __future__ import annotations

from pathlib import Path

from tasks.contracts.report import DataValidationError, unreadable_report
from tasks.core.io import file_sha256, read_json
from tasks.core.paths import ArtifactPaths


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
