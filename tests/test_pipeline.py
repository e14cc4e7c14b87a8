"""The whole pipeline both ways: `dvc repro` and the Prefect flow, sharing DVC's cache."""

import json

import pytest

from flows.pipeline import PipelineFailed, training_pipeline
from tasks.core.config import STAGES
from tasks.validate import DataValidationError
from tests.conftest import BIN, run


def latest_artifact(key: str):
    """The newest version of a Prefect artifact, read back through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no Prefect artifact {key!r}"
    return found[0]


def dvc(root, *args, check=True):
    return run([str(BIN / "dvc"), *args], root, check=check)


def test_dvc_repro_runs_every_stage_then_has_nothing_to_do(make_project):
    root = make_project()
    first = dvc(root, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    decision = json.loads((root / "artifacts" / "gate" / "decision.json").read_text())
    assert decision["decision"] in ("PROMOTE", "REJECT")
    second = dvc(root, "repro")
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout.lower()
    # Bad data: dvc repro fails at validate, and (outs persist) the last good outputs stay.
    good_report = (root / "artifacts" / "validate" / "report.json").read_bytes()
    (root / "data" / "movie_reviews.csv").write_text("text,label\nnot enough rows,1\n")
    assert dvc(root, "repro", check=False).returncode != 0
    assert (root / "artifacts" / "validate" / "report.json").read_bytes() == good_report
    assert (root / "artifacts" / "prepare" / "train.parquet").is_file()


def test_flow_runs_stages_records_them_in_dvc_and_skips_them_next_time(make_project, prefect_api):
    root = make_project()
    outcomes = training_pipeline(project=str(root))
    assert [(o.stage, o.status) for o in outcomes] == [(s, "completed") for s in STAGES]
    assert "dev accuracy" in outcomes[2].key_figure
    # DVC now agrees nothing is stale: dvc repro would run nothing.
    assert dvc(root, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert latest_artifact("gate-decision").data.startswith("# Gate: ")
    again = training_pipeline(project=str(root))
    assert [o.status for o in again] == ["skipped"] * len(STAGES)
    assert [o.key_figure for o in again] == [o.key_figure for o in outcomes]


def test_flow_override_reruns_only_affected_stages(make_project, prefect_api):
    root = make_project()
    training_pipeline(project=str(root))
    outcomes = training_pipeline(overrides=["gate.min_accuracy=0.99"], project=str(root))
    status = {o.stage: o.status for o in outcomes}
    assert status == {**{s: "skipped" for s in STAGES[:-1]}, "gate": "completed"}
    assert "min_accuracy: 0.99" in (root / "params.yaml").read_text()
    assert json.loads((root / "artifacts" / "gate" / "decision.json").read_text())["decision"] == "REJECT"


def test_bad_data_stops_the_flow_at_validate_with_nothing_downstream(make_project, prefect_api, reviews_frame):
    bad = reviews_frame.copy()
    bad.loc[0, "label"] = 7
    root = make_project(frame=bad)
    with pytest.raises(PipelineFailed) as caught:
        training_pipeline(project=str(root))
    assert isinstance(caught.value.cause, DataValidationError)
    assert [(o.stage, o.status) for o in caught.value.outcomes] == [("validate", "failed")]
    report = json.loads((root / "artifacts" / "_failed" / "validate" / "report.json").read_text())
    assert not report["success"]
    assert sorted(p.name for p in (root / "artifacts").iterdir()) == ["_failed"]
    published = latest_artifact("data-validation")
    assert published.type == "markdown" and "# Data contract: FAILED" in published.data


def test_bad_data_stops_dvc_repro_at_validate(make_project, reviews_frame):
    bad = reviews_frame.copy()
    bad.loc[0, "text"] = "   "
    root = make_project(frame=bad)
    done = dvc(root, "repro", check=False)
    assert done.returncode != 0
    assert "expect_column_values_to_not_match_regex" in done.stdout + done.stderr
    assert not (root / "artifacts" / "prepare").exists()


def test_cli_run_starts_an_ephemeral_api_and_prints_the_summary(make_project):
    root = make_project()
    done = run([str(BIN / "tunegate"), "run", "--project", str(root)], root, check=False)
    assert done.returncode == 0, done.stderr
    for stage in STAGES:
        assert stage in done.stdout
    assert "completed" in done.stdout and "key figure" in done.stdout
