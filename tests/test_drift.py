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


def drift_cfg(tiny_model_dir, **validate_changes):
    raw = tiny_params(tiny_model_dir)
    raw["validate"].update({"drift_reference": "last_data_commit", **validate_changes})
    return parse_config(raw)


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
    with pytest.raises(DataValidationError, match="drift_label_psi_at_most"):
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
