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
    assert "14/14 checks pass, 0 warning(s)" in result.key_figure
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
                           "expect_column_values_to_be_between:label"}  # class share: label 9 is 1 row in 440
    assert broken["expect_column_values_to_be_in_set:label"]["unexpected_count"] == 1
    assert broken["expect_column_values_to_be_in_set:label"]["sample_rows"][0]["row"] == 7
    assert broken["expect_column_values_to_not_match_regex:text"]["sample_rows"][0]["row"] == 3
    assert all(c["severity"] == "error" for c in broken.values())
    message = str(caught.value)  # a short summary: the verdict and each failed check by name
    assert message.splitlines()[0] == "data contract FAILED (4 of 14 checks)"
    assert {"text not missing [text]", "text not blank [text]", "label in data.labels [label]",
            "class share in bounds [label]"} <= {line.strip("- ").partition(":")[0] for line in message.splitlines()}
    assert "allowed: 0, 1" in message and "Sample bad rows" not in message
    assert message.endswith(str(ArtifactPaths(root).failed_dir("validate") / "report.md"))
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
    with pytest.raises(DataValidationError, match="table readable"):
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
    assert [(c["name"], c["column"]) for c in failed] == [("text is a string", "text")]
    assert failed[0]["sample_rows"][0]["row"] == 3


def test_a_class_of_data_labels_without_rows_fails_the_raw_contract(project, reviews_frame):
    root, cfg = project
    three = tiny_three_classes(cfg)
    reviews_frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
    broken = failing(validate_table(root, three))
    check = broken["expect_column_distinct_values_to_contain_set:label"]
    assert check["name"] == "every class has rows" and check["missing_values"] == [2]
    assert set(broken) == {"expect_column_distinct_values_to_contain_set:label"}, "the class-share check misses it"


def tiny_three_classes(cfg):
    data = cfg.data.model_copy(update={"labels": [0, 1, 2], "label_names": ["negative", "positive", "neutral"]})
    return cfg.model_copy(update={"data": data})


def test_a_column_that_looks_like_a_split_is_not_ignored_silently(project, reviews_frame):
    from tasks.contracts.raw import check_table

    root, cfg = project
    split = np.where(np.arange(len(reviews_frame)) % 10 == 0, "Validation", "train")
    checks = {c["name"]: c for c in check_table(reviews_frame.assign(Fold=split), root, cfg)["checks"]}
    warning = checks["no split ignored"]
    assert not warning["success"] and warning["severity"] == "warning" and warning["column"] == "Fold"
    assert "-S data.split_column=Fold" in warning["hint"] and "column 'Fold'" in warning["hint"]
    numbered = check_table(reviews_frame.assign(fold=np.arange(len(reviews_frame)) % 5), root, cfg)
    assert all(c["success"] for c in numbered["checks"]), "fold numbers are not a train/dev/test assignment"


def test_a_folder_of_split_files_without_split_column_warns(project, reviews_frame):
    root, cfg = project
    folder = root / "data" / "reviews"
    folder.mkdir()
    for name, part in (("train", 0), ("validation", 1), ("test", 2)):
        reviews_frame.iloc[part::3].to_csv(folder / f"{name}.csv", index=False)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": "data/reviews"})})
    report = validate_table(root, cfg)
    [warning] = [c for c in report["checks"] if not c["success"]]
    assert report["success"] and warning["name"] == "no split ignored"
    assert "train.csv" in warning["hint"] and "-S data.split_column=split" in warning["hint"]


def write_params_yaml(root, cfg, comment=""):
    from ruamel.yaml import YAML

    (root / "params.yaml").write_text(comment)
    with (root / "params.yaml").open("a") as handle:
        YAML().dump(cfg.dump(), handle)


@pytest.mark.heavy
def test_cli_validate_applies_overrides_in_memory_only(project, reviews_frame, monkeypatch, capsys):
    from flows.cli import main

    root, cfg = project
    write_params_yaml(root, cfg, comment="# my comment\n")
    params = (root / "params.yaml").read_bytes()
    path = root / "presplit.csv"
    rt = reviews_frame[reviews_frame["source"] == "rotten_tomatoes"]
    rt.assign(split=np.select([rt.groupby("label").cumcount() < 160, rt.groupby("label").cumcount() < 180],
                              ["train", "valid"], "test")).to_csv(path, index=False)
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["validate", str(path)]) == 0
    assert "data.split_column=split" in capsys.readouterr().out
    assert main(["validate", str(path), "-S", "data.split_column=split", "-S", "validate.min_rows=10"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "warn" not in out, out
    assert main(["validate", str(path), "-S", "validate.min_rows=100000"]) == 1
    assert (root / "params.yaml").read_bytes() == params


def test_cli_validate_table_fits_80_columns_with_every_failed_check_named_whole(project, reviews_frame,
                                                                               monkeypatch, capsys):
    from flows.cli import main

    root, cfg = project
    bad = reviews_frame.copy()
    bad.loc[3, "text"] = "   "
    bad.loc[5, "text"] = np.nan
    bad.loc[7, "label"] = 9
    bad.loc[list(range(0, 40, 4)), "text"] = "bad\x07bytes\x00here"
    write_params_yaml(root, cfg)
    path = root / "bad.csv"
    bad.to_csv(path, index=False)
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    failed = [line for line in lines if " FAIL " in line]
    names = {"text not missing", "text not blank", "no control characters", "label in data.labels",
             "class share in bounds"}
    assert {n for n in names if any(f"  {n}  " in line for line in failed)} == names, out
    assert len(failed) == len(names)
    assert all(len(line) <= 80 for line in lines[1:]), "only the first line (path: verdict) may run longer"
    assert "expect_column" not in out, "GX types stay in the report files, not in the terminal"
