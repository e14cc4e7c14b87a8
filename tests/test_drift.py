"""Drift: the current data is compared with the data version of the last commit that changed data.dvc."""

import shutil

import pandas as pd
import pytest

from tasks.core.config import parse_config
from tasks.contracts.report import DataValidationError
from tasks.core.data import default_data_source
from tasks.core.paths import ArtifactPaths
from tasks.contracts.raw import validate_table
from tasks.validate import validate
from tests.conftest import REPO, tiny_params


def drift_checks(report):
    return {c["expectation"]: c for c in report["checks"] if c["suite"] == "drift"}


@pytest.fixture
def drifted():
    """Long IMDB reviews, 80% positive: other labels, lengths and words than the short, balanced slice."""
    imdb = pd.read_csv(default_data_source()).query("source == 'imdb'")
    return pd.concat([imdb[imdb.label == 1].head(240), imdb[imdb.label == 0].head(60)], ignore_index=True)


def drift_cfg(tiny_model_dir, data=None, **validate_changes):
    raw = tiny_params(tiny_model_dir)
    raw["data"].update(data or {})
    raw["validate"].update({"drift_reference": "last_data_commit", **validate_changes})
    return parse_config(raw)


RELABELLED = {"labels": ["neg", "pos"], "label_names": ["negative", "positive"]}


def relabelled(frame):
    """The same rows with labels 0/1 written as neg/pos."""
    return frame.assign(label=frame["label"].map({0: "neg", 1: "pos"}))


def test_unchanged_data_shows_no_drift(make_project, tiny_model_dir):
    root = make_project()
    report = validate_table(root, drift_cfg(tiny_model_dir))
    checks = drift_checks(report)
    assert set(checks) == {"drift_label_psi_at_most", "drift_length_ks_at_most", "drift_oov_rate_at_most"}
    assert all(c["success"] and c["observed_value"] == 0 for c in checks.values())
    assert "last commit that changed data.dvc" in checks["drift_label_psi_at_most"]["kwargs"]["reference"]


def test_a_fresh_clone_without_the_dvc_cache_compares_with_the_unchanged_workspace(make_project, tiny_model_dir):
    root = make_project()
    shutil.rmtree(root / ".dvc" / "cache")  # like a fresh clone before `dvc pull`
    checks = drift_checks(validate_table(root, drift_cfg(tiny_model_dir)))
    assert "drift_reference_available" not in checks
    assert all(c["success"] and c["observed_value"] == 0 for c in checks.values())


def test_changed_data_without_its_reference_in_any_cache_is_a_visible_warning(make_project, tiny_model_dir, drifted):
    root = make_project()
    shutil.rmtree(root / ".dvc" / "cache")
    drifted.to_csv(root / "data" / "movie_reviews.csv", index=False)
    report = validate_table(root, drift_cfg(tiny_model_dir))
    check = drift_checks(report)["drift_reference_available"]
    assert report["success"] and check["severity"] == "warning" and "not in the DVC cache" in check["error"]


def test_drift_from_the_committed_data_version_is_measured_and_warned(make_project, tiny_model_dir, drifted):
    root = make_project()
    drifted.to_csv(root / "data" / "movie_reviews.csv", index=False)  # changed, not yet committed
    cfg = drift_cfg(tiny_model_dir)
    result = validate.fn(cfg, ArtifactPaths(root))
    assert "3 warning(s)" in result.key_figure
    report = validate_table(root, cfg)
    checks = drift_checks(report)
    assert checks["drift_label_psi_at_most"]["observed_value"] == pytest.approx(0.3 * 0.470 + 0.3 * 0.916, abs=0.01)
    assert checks["drift_length_ks_at_most"]["observed_value"] > 0.5
    assert checks["drift_oov_rate_at_most"]["observed_value"] > cfg.validate_.max_oov_rate
    assert all(c["severity"] == "warning" and not c["success"] for c in checks.values())
    profile = next(v for k, v in report["profile"].items() if k.startswith("Drift vs"))
    assert {row["statistic"] for row in profile} >= {"label_psi", "label_chi2_pvalue", "length_ks", "oov_rate"}


def test_drift_as_error_stops_validation(make_project, tiny_model_dir, drifted):
    root = make_project()
    drifted.to_csv(root / "data" / "movie_reviews.csv", index=False)
    with pytest.raises(DataValidationError, match=r"label drift \(PSI\)"):
        validate.fn(drift_cfg(tiny_model_dir, drift_severity="error"), ArtifactPaths(root))


def test_drift_against_a_reference_file(make_project, tiny_model_dir, drifted):
    root = make_project()
    drifted.to_csv(root / "reference.csv", index=False)
    checks = drift_checks(validate_table(root, drift_cfg(tiny_model_dir, drift_reference="reference.csv")))
    assert not checks["drift_label_psi_at_most"]["success"]


def test_missing_reference_is_a_visible_warning(tmp_path, tiny_model_dir, reviews_frame):
    (tmp_path / "data").mkdir()
    (tmp_path / "expectations").symlink_to(REPO / "expectations")
    reviews_frame.to_csv(tmp_path / "data" / "movie_reviews.csv", index=False)
    report = validate_table(tmp_path, drift_cfg(tiny_model_dir))  # not a git repository
    check = drift_checks(report)["drift_reference_available"]
    assert report["success"] and check["severity"] == "warning" and "git" in check["error"]


def test_relabelled_but_identical_data_shows_no_label_drift(make_project, tiny_model_dir, reviews_frame):
    root = make_project()  # committed with labels 0/1 (params.yaml at that commit says so)
    relabelled(reviews_frame).to_csv(root / "data" / "movie_reviews.csv", index=False)
    for data in (RELABELLED, {"labels": ["neg", "pos"], "label_names": ["bad", "good"]}):  # by name, by position
        checks = drift_checks(validate_table(root, drift_cfg(tiny_model_dir, data)))
        assert checks["drift_label_psi_at_most"]["success"] and checks["drift_label_psi_at_most"]["observed_value"] == 0


def table_project(root, frame, reference):
    """A folder with the suites, data/movie_reviews.csv = frame and reference.csv = reference (no git, no DVC)."""
    (root / "data").mkdir()
    (root / "expectations").symlink_to(REPO / "expectations")
    frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
    reference.to_csv(root / "reference.csv", index=False)
    return root


def test_a_reference_table_labelled_otherwise_skips_label_drift_with_the_reason(tmp_path, tiny_model_dir,
                                                                               reviews_frame):
    root = table_project(tmp_path, relabelled(reviews_frame), reviews_frame)  # reference labels 0/1
    report = validate_table(root, drift_cfg(tiny_model_dir, RELABELLED, drift_reference="reference.csv"))
    checks = drift_checks(report)
    label = checks["drift_label_psi_at_most"]
    assert report["success"] and label["skipped"] and label["severity"] == "warning"
    assert "not in data.labels" in label["error"] and "not labelled like this data" in label["error"]
    assert checks["drift_length_ks_at_most"]["success"] and not checks["drift_length_ks_at_most"].get("skipped")


def test_a_label_typo_in_data_labels_is_named_not_a_drift_crash(tmp_path, tiny_model_dir, reviews_frame):
    root = table_project(tmp_path, relabelled(reviews_frame), relabelled(reviews_frame))
    cfg = drift_cfg(tiny_model_dir, {"labels": ["neg", "positive"], "label_names": ["negative", "positive"]},
                    drift_reference="reference.csv")
    report = validate_table(root, cfg)
    failed = {c["name"]: c for c in report["checks"] if not c["success"]}
    assert not report["success"] and failed["label in data.labels"]["unexpected_values"] == ["pos"]
    assert failed["every class has rows"]["missing_values"] == ["positive"]
    assert failed["label drift (PSI)"]["skipped"] and "not in data.labels" in failed["label drift (PSI)"]["error"]


def test_a_changed_data_path_says_it_did_not_exist_at_the_reference_commit(make_project, tiny_model_dir,
                                                                          reviews_frame):
    root = make_project()
    reviews_frame.to_json(root / "data" / "reviews.jsonl", orient="records", lines=True)
    report = validate_table(root, drift_cfg(tiny_model_dir, {"path": "data/reviews.jsonl"}))
    check = drift_checks(report)["drift_reference_available"]
    assert report["success"] and check["severity"] == "warning"
    assert check["error"].startswith("data/reviews.jsonl did not exist at commit ")
    assert check["error"].endswith("(data.path changed since?)") and "cache" not in check["error"]


def test_drift_on_data_that_failed_structural_checks_is_skipped_with_the_reason(tmp_path, tiny_model_dir,
                                                                               reviews_frame):
    from tasks.contracts.drift import drift_report

    reviews_frame.to_csv(tmp_path / "reference.csv", index=False)
    cfg = drift_cfg(tiny_model_dir, drift_reference="reference.csv")
    current = reviews_frame.copy()
    current.loc[[1, 2], "label"] = float("nan")
    current.loc[3, "text"] = None
    checks = drift_checks(drift_report(current, tmp_path, cfg.data, cfg.validate_))
    assert {name: c.get("skipped") for name, c in checks.items()} == {
        "drift_label_psi_at_most": True, "drift_length_ks_at_most": True, "drift_oov_rate_at_most": True}
    assert "2 label(s) missing or not in data.labels" in checks["drift_label_psi_at_most"]["error"]
    assert "1 text(s) missing or not strings" in checks["drift_oov_rate_at_most"]["error"]
    without_text = drift_report(current.drop(columns="text"), tmp_path, cfg.data, cfg.validate_)
    assert "column 'text' is missing" in drift_checks(without_text)["drift_length_ks_at_most"]["error"]
