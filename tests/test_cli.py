"""The tunegate CLI: clear errors and exit codes, no tracebacks for expected failures."""

import pytest

from flows.cli import build_parser, main
from tasks.core.data import default_data_source


def test_cli_stage_exits_1_with_the_validation_report(make_project, reviews_frame, monkeypatch, capsys):
    bad = reviews_frame.copy()
    bad.loc[2, "label"] = 5
    root = make_project(frame=bad)
    monkeypatch.chdir(root)
    assert main(["stage", "validate"]) == 1
    err = capsys.readouterr().err
    assert "DataValidationError" in err and "expect_column_values_to_be_in_set" in err and "Traceback" not in err


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
