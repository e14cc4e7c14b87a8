"""The tunegate CLI: clear errors and exit codes, no tracebacks for expected failures."""

import json
import logging

import pytest

from flows.cli import build_parser, main
from tasks.contracts.report import check_name
from tasks.core.data import default_data_source


def test_cli_stage_exits_1_with_the_validation_report(make_project, reviews_frame, monkeypatch, capsys):
    bad = reviews_frame.copy()
    bad.loc[2, "label"] = 5
    root = make_project(frame=bad)
    monkeypatch.chdir(root)
    assert main(["stage", "validate"]) == 1
    err = capsys.readouterr().err
    report = json.loads((root / "artifacts" / "_failed" / "validate" / "report.json").read_text())
    failed = [c for c in report["checks"] if not c["success"] and c["severity"] == "error"]
    assert "expect_column_values_to_be_in_set" in [c["expectation"] for c in failed]
    assert "DataValidationError" in err and all(check_name(c) in err for c in failed) and "Traceback" not in err


def test_cli_stage_reports_invalid_params(make_project, monkeypatch, capsys):
    root = make_project()
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 1", "epochs: 0"))
    monkeypatch.chdir(root)
    assert main(["stage", "train"]) == 1
    assert "train.epochs" in capsys.readouterr().err


def test_cli_data_default_copies_the_packaged_csv(tmp_path, capsys):
    assert main(["data", "default", "--data-dir", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "movie_reviews.csv").read_bytes() == default_data_source().read_bytes()
    assert main(["data", "default", "--data-dir", str(tmp_path / "data")]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_cli_rejects_unknown_stage():
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["stage", "deploy"])
    assert caught.value.code == 2


def test_cli_debug_shows_the_traceback_of_an_expected_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: a ConfigError, the kind of mistake users make
    monkeypatch.delenv("TUNEGATE_DEBUG", raising=False)
    assert main(["stage", "train"]) == 1
    quiet = capsys.readouterr().err
    assert "params.yaml not found" in quiet and "Traceback" not in quiet
    assert main(["--debug", "stage", "train"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("TUNEGATE_DEBUG", "1")
    assert main(["stage", "train"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, message, None, exc_info)


def test_console_filter_drops_prefect_copies_of_user_errors_and_keeps_unexpected_ones():
    from flows.console_log import QuietUserErrors
    from flows.pipeline import PipelineFailed, StageOutcome
    from tasks.core.config import ConfigError

    quiet = QuietUserErrors()
    cause = ConfigError("invalid params: train.epochs")
    wrapped = PipelineFailed([StageOutcome("train", "failed", 0.1, "ConfigError")], cause)
    assert not quiet.filter(_record("Task run failed with exception: ConfigError(...)", cause))
    assert not quiet.filter(_record("Encountered exception during execution: PipelineFailed(...)", wrapped))
    assert not quiet.filter(_record("Finished in state Failed('Flow run encountered an exception: "
                                    "PipelineFailed: stage train failed: invalid params')"))
    assert not quiet.filter(_record("Engine execution interrupted by base exception", KeyboardInterrupt()))
    bug = PipelineFailed([StageOutcome("train", "failed", 0.1, "ZeroDivisionError")], ZeroDivisionError("x"))
    fresh = QuietUserErrors()
    assert fresh.filter(_record("Encountered exception during execution: PipelineFailed(...)", bug))
    assert fresh.filter(_record("Finished in state Failed('... PipelineFailed: stage train failed: x')"))
    assert quiet.filter(_record("Beginning flow run 'x' for flow 'training_pipeline'"))
