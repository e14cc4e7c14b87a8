"""validate: the GX suite passes good data and stops bad data with a readable report."""

import numpy as np
import pytest

from tasks.core.config import parse_config
from tasks.core.paths import ArtifactPaths
from tasks.contracts.guard import require_validated
from tasks.contracts.raw import validate_table
from tasks.validate import DataValidationError, validate
from tests.conftest import REPO, tiny_params


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "expectations").symlink_to(REPO / "expectations")
    return tmp_path, parse_config(tiny_params(tiny_model_dir))


def failing(report):
    """Failed checks keyed by 'expectation:column' (one expectation type may check several columns)."""
    return {f"{c['expectation']}:{c['column']}": c for c in report["checks"] if not c["success"]}


def test_validate_passes_real_reviews(project, reviews_frame):
    root, cfg = project
    reviews_frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
    result = validate.fn(cfg, ArtifactPaths(root))
    report = ArtifactPaths(root).validation_report
    assert report.is_file() and (report.parent / "report.md").is_file()
    assert "12/12 checks pass, 0 warning(s)" in result.key_figure
    assert (report.parent / "report.html").read_text().startswith("<!doctype html>")
    require_validated(ArtifactPaths(root), root / cfg.data.path)


def test_a_passing_report_does_not_vouch_for_changed_data(project, reviews_frame):
    root, cfg = project
    data = root / "data" / "movie_reviews.csv"
    reviews_frame.to_csv(data, index=False)
    validate.fn(cfg, ArtifactPaths(root))
    reviews_frame.head(300).to_csv(data, index=False)
    with pytest.raises(DataValidationError, match="data changed since it was last validated"):
        require_validated(ArtifactPaths(root), data)


def test_validate_reports_each_broken_rule_with_sample_rows(project, reviews_frame):
    root, cfg = project
    bad = reviews_frame.copy()
    bad.loc[3, "text"] = "   "
    bad.loc[5, "text"] = np.nan
    bad.loc[7, "label"] = 9
    bad.to_csv(root / "data" / "movie_reviews.csv", index=False)
    with pytest.raises(DataValidationError) as caught:
        validate.fn(cfg, ArtifactPaths(root))
    broken = failing(caught.value.report)
    assert set(broken) == {"expect_column_values_to_not_be_null:text", "expect_column_values_to_not_match_regex:text",
                           "expect_column_values_to_be_in_set:label",
                           "expect_column_values_to_be_between:__class_share"}  # label 9 is 1 row in 440
    assert broken["expect_column_values_to_be_in_set:label"]["unexpected_count"] == 1
    assert broken["expect_column_values_to_be_in_set:label"]["sample_rows"][0]["row"] == 7
    assert broken["expect_column_values_to_not_match_regex:text"]["sample_rows"][0]["row"] == 3
    assert all(c["severity"] == "error" for c in broken.values())
    message = str(caught.value)
    assert "FAILED (4 of 12 checks)" in message and "expect_column_values_to_be_in_set" in message
    with pytest.raises(DataValidationError):
        require_validated(ArtifactPaths(root), root / cfg.data.path)


def test_validate_names_a_missing_column(project, reviews_frame):
    root, cfg = project
    reviews_frame.rename(columns={"label": "sentiment"}).to_csv(root / "data" / "movie_reviews.csv", index=False)
    report = validate_table(root, cfg)
    assert not report["success"]
    columns_check = failing(report)["expect_table_columns_to_match_set:None"]
    assert "sentiment" in str(columns_check["observed_value"])


def test_validate_bounds_row_count_and_text_length(project, reviews_frame):
    root, cfg = project
    small = reviews_frame.head(10).copy()
    small.loc[0, "text"] = "x" * (cfg.validate_.max_text_chars + 1)
    small.to_csv(root / "data" / "movie_reviews.csv", index=False)
    broken = failing(validate_table(root, cfg))
    assert broken["expect_table_row_count_to_be_between:None"]["observed_value"] == 10
    assert broken["expect_column_value_lengths_to_be_between:text"]["unexpected_count"] == 1


def test_validate_reports_an_unreadable_file(project):
    root, cfg = project
    (root / "data" / "movie_reviews.csv").write_bytes(b"")
    with pytest.raises(DataValidationError, match="readable_table"):
        validate.fn(cfg, ArtifactPaths(root))


def test_text_type_check_works_for_pandas_object_and_str_columns(project, reviews_frame):
    from tasks.contracts.raw import check_table

    root, cfg = project
    results = []
    for dtype in (object, "str"):
        frame = reviews_frame.astype({"text": dtype})
        results.append({c["expectation"] + str(c["column"]): c["success"] for c in check_table(frame, root, cfg)["checks"]})
    assert results[0] == results[1] and all(results[0].values())
    mixed = reviews_frame.astype({"text": object})
    mixed.loc[3, "text"] = 12345
    failed = [c for c in check_table(mixed, root, cfg)["checks"] if not c["success"]]
    assert [c["column"] for c in failed] == ["__text_is_string"] and failed[0]["sample_rows"][0]["row"] == 3
