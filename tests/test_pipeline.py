"""The whole pipeline both ways: `dvc repro` and the Prefect flow, sharing DVC's cache."""

import json
import shutil

import pytest

from flows.pipeline import PipelineFailed, training_pipeline
from tasks.contracts.report import check_name, summary
from tasks.core.config import STAGES
from tasks.core.host import cpu_facts, same_numerics
from tasks.core.lock_cpu import lock_cpus_on_disk, record_lock_cpu
from tasks.core.paths import ArtifactPaths
from tasks.validate import DataValidationError
from tests.conftest import BIN, default_run_project, latest_artifact, repro_output, run

pytestmark = pytest.mark.e2e  # whole flows and `dvc repro` on a project copy


def dvc(root, *args, check=True):
    return run([str(BIN / "dvc"), *args], root, check=check)


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_has_nothing_to_do(make_project, tiny_model_dir):
    # The first `dvc repro` ran once in the shared template (the flow tests below start from it too); this copy
    # holds what it made, and its output.
    root = default_run_project(make_project, tiny_model_dir)
    first_stdout = repro_output(root)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_stdout
    decision = json.loads((root / "artifacts" / "gate" / "decision.json").read_text())
    assert decision["decision"] == "PROMOTE"
    recorded = lock_cpus_on_disk(ArtifactPaths(root))  # beside dvc.lock: the CPU each stage was recorded on
    assert list(recorded) == list(STAGES) and all(same_numerics(f, cpu_facts()) for f in recorded.values())
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


@pytest.mark.slow
def test_flow_override_reruns_only_affected_stages(make_project, prefect_api, tiny_model_dir):
    root = default_run_project(make_project, tiny_model_dir)
    assert json.loads((root / "artifacts" / "gate" / "decision.json").read_text())["decision"] == "PROMOTE"
    outcomes = training_pipeline(overrides=["gate.min_accuracy=0.99"], project=str(root))
    status = {o.stage: o.status for o in outcomes}
    assert status == {**{s: "skipped" for s in STAGES[:-1]}, "gate": "completed"}
    assert "min_accuracy: 0.99" in (root / "params.yaml").read_text()
    # A 2-layer, 32-wide model trained for one epoch on 352 rows cannot reach 99% accuracy.
    assert json.loads((root / "artifacts" / "gate" / "decision.json").read_text())["decision"] == "REJECT"


def test_flow_asks_dvc_once_until_a_stage_runs_then_stage_by_stage(make_project, prefect_api, tiny_model_dir,
                                                                   monkeypatch):
    from tasks.core.dvc_cache import DvcStageCache

    root = default_run_project(make_project, tiny_model_dir)
    asked, whole = [], []
    one_stage, every_stage = DvcStageCache.is_up_to_date, DvcStageCache.stale
    monkeypatch.setattr(DvcStageCache, "is_up_to_date",
                        lambda self, stage: asked.append(stage) or one_stage(self, stage))
    monkeypatch.setattr(DvcStageCache, "stale", lambda self: whole.append(1) or every_stage(self))
    # Nothing to do: one `dvc status` answers for every stage.
    assert {o.status for o in training_pipeline(project=str(root))} == {"skipped"}
    assert (whole, asked) == ([1], [])
    # Only quantize's params changed: the stages before it are answered by the one status; quantize runs, and what
    # it wrote may make the gate stale although it was not before, so the gate asks for itself.
    whole.clear()
    outcomes = {o.stage: o.status for o in training_pipeline(overrides=["quantize.latency_rows=3"], project=str(root))}
    assert [outcomes[s] for s in STAGES[:-2]] == ["skipped"] * (len(STAGES) - 2)
    assert outcomes["quantize"] == "completed" and STAGES[-1] == "gate"
    assert (whole, asked) == ([1], ["gate"])
    assert dvc(root, "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_flow_judges_a_candidate_against_a_champion_named_by_override(make_project, prefect_api, tiny_model_dir,
                                                                      tmp_path):
    root = default_run_project(make_project, tiny_model_dir)
    champion = tmp_path / "production"
    shutil.copytree(root / "artifacts" / "gate" / "release", champion)  # the model now in production
    outcomes = training_pipeline(overrides=[f"gate.champion={champion}"], project=str(root))
    assert {o.stage: o.status for o in outcomes} == {**{s: "skipped" for s in STAGES[:-1]}, "gate": "completed"}
    decision = json.loads((root / "artifacts" / "gate" / "decision.json").read_text())
    assert decision["decision"] == "PROMOTE", decision["why"]
    assert decision["comparison"]["differences"]["accuracy"]["value"] == 0.0  # the same model, judged twice
    assert "vs champion +0.0000" in outcomes[-1].key_figure
    assert latest_artifact("gate-decision").data.startswith("# Gate: PROMOTE")
    assert dvc(root, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    strict = training_pipeline(overrides=["gate.champion=null", "gate.first_run=require_champion"], project=str(root))
    assert "INCONCLUSIVE" in strict[-1].key_figure  # the flow completes whatever the verdict


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
    report = json.loads((root / "artifacts" / "_failed" / "validate" / "report.json").read_text())
    failed = [c for c in report["checks"] if not c["success"]]
    assert [c["expectation"] for c in failed] == ["expect_column_values_to_not_match_regex"]
    assert check_name(failed[0]) in done.stdout + done.stderr
    assert not (root / "artifacts" / "prepare").exists()


def test_cli_run_starts_an_ephemeral_api_and_prints_the_summary(make_project):
    root = make_project()
    # The committed dvc.lock came from a CPU of other numerics (an AMX Xeon, or an AVX2 EPYC on such a Xeon).
    host = cpu_facts()
    other = ({"machine": host["machine"], "model": "AMD EPYC 7B13", "kind": "avx2", "flags": ["avx2", "fma"]}
             if "amx_int8" in host["flags"] else
             {"machine": host["machine"], "model": "Intel(R) Xeon(R) Platinum 8480+", "kind": "avx512_vnni+amx",
              "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]})
    paths = ArtifactPaths(root)
    for stage in STAGES:
        record_lock_cpu(paths, stage, other)
    run(["git", "add", paths.lock_cpu.name], root)
    run(["git", "commit", "-q", "-m", "dvc.lock from another CPU"], root)
    done = run([str(BIN / "tunegate"), "run", "--project", str(root)], root, check=False)
    assert done.returncode == 0, done.stderr
    cells = [[cell.strip() for cell in line.split("│")[1:3]] for line in done.stdout.splitlines()
             if line.startswith("│")]
    rows = [cell for cell in cells if cell[0]]  # a long key figure wraps onto lines of its own
    assert rows == [[stage, "completed"] for stage in STAGES]
    summary_text = " ".join(done.stdout.split())
    assert (f"dvc.lock was committed from {other['kind']}, {other['model']}; this host is {host['kind']}, "
            f"{host['model']}: training on another instruction set gives other bytes from train on; the verdict is "
            "re-earned here and the shipped model's parity certificate is re-checked where it is served."
            in summary_text)
    assert all(same_numerics(f, host) for f in lock_cpus_on_disk(paths).values()), "every stage reran here"


def test_cli_run_prints_a_failed_check_once_without_traceback(make_project, reviews_frame):
    bad = reviews_frame.copy()
    bad.loc[0, "label"] = 7
    root = make_project(frame=bad)
    done = run([str(BIN / "tunegate"), "run"], root, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    report = json.loads((root / "artifacts" / "_failed" / "validate" / "report.json").read_text())
    failed = [check_name(c) for c in report["checks"] if not c["success"] and c["severity"] == "error"]
    assert failed and all(name in output for name in failed)
    assert output.count(summary(report).splitlines()[0]) == 1
    assert "Traceback" not in output
    assert "pipeline stopped at validate: DataValidationError" in done.stderr
