"""The deployments of prefect.yaml on a real Prefect server and a real process worker, on a tiny project:
a manual and a scheduled run complete, stages DVC has up to date show as Skipped, the monitor flow on a drifted
log emits tunegate.drift.detected and the event-triggered retraining runs, and a second retraining is cancelled.

One server, worker and project serve the module (a server start and a pipeline run are the costly parts), so the
tests run in file order and each builds on the last: the first run trains and promotes, the later ones find the
stages up to date."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from ruamel.yaml import YAML

from flows.monitoring import DRIFT_EVENT
from tasks.core.config import STAGES
from tasks.core.data import default_data_source
from tests.conftest import BIN, LENIENT_GATE, REPO, build_project, run, tiny_params
from tests.prefect_server import POOL, PrefectServer, prefect_server, wait_for, wait_healthy

# A Prefect server, a worker and flow runs in subprocesses. One scenario in steps: later tests use what earlier ones
# left on the module's server and project (a version in prod), so they run in this order on one worker (make test
# hands whole modules to its xdist workers).
pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 300  # one tiny pipeline run in a fresh process on a busy 2-core host
DRIFTED_TEXTS = 120  # long IMDB reviews: far from the Rotten Tomatoes sentences the model was trained on


def deployments_of(prefect_yaml: Path) -> dict[str, dict]:
    """prefect.yaml's deployments by name."""
    return {d["name"]: d for d in YAML(typ="safe").load(prefect_yaml.read_text())["deployments"]}


def full_name(server: PrefectServer, deployment: str) -> str:
    """`flow/deployment`, what `prefect deployment run` takes, for a deployment's name."""
    with server.client() as client:
        [found] = [d for d in client.read_deployments() if d.name == deployment]
        return f"{client.read_flow(found.flow_id).name}/{deployment}"


def triggered_by(specs: dict[str, dict], event: str) -> dict:
    """The deployment whose trigger expects `event`."""
    found = [d for d in specs.values() if any(event in t.get("expect", []) for t in d.get("triggers") or [])]
    assert len(found) == 1, f"one deployment should be triggered by {event}, found {[d['name'] for d in found]}"
    return found[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, reviews_frame) -> Path:
    """A tiny git + DVC project (random 2-layer BERT, 352 training rows) with the repo's prefect.yaml, validate and
    prepare recorded in its committed dvc.lock."""
    params = tiny_params(tiny_model_dir)
    params["gate"].update(LENIENT_GATE)
    params["quantize"]["ladder"] = ["fp32"]  # no quantization to try: the run stays short
    params["monitor"]["min_window_texts"] = DRIFTED_TEXTS // 2
    base = tmp_path_factory.mktemp("served")
    root = build_project(base / "project", reviews_frame, params)
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(base / "dvc-remote")], root)  # promote pushes there
    # A project has a committed dvc.lock before its first retraining (the retraining commits the changes to it).
    # Recording only validate and prepare leaves the model stages for the first deployment run to do.
    run([str(BIN / "dvc"), "repro", "prepare"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "deployments, a DVC remote, the data stages"], root)  # a clean tree
    return root


@pytest.fixture(scope="module")
def booting_server(tmp_path_factory) -> PrefectServer:
    """One Prefect server for the module, started first: it boots while the project is built."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server"), wait=False) as started:
        yield started


@pytest.fixture(scope="module")
def server(booting_server, project) -> PrefectServer:
    """The module's server, healthy, with the work pool, every deployment of prefect.yaml and one worker."""
    wait_healthy(booting_server)
    booting_server.cli("work-pool", "create", POOL, "--type", "process", cwd=project)
    booting_server.cli("deploy", "--all", cwd=project)
    pause_monitor_schedule(booting_server)
    booting_server.start_worker(project)
    return booting_server


def pause_monitor_schedule(server: PrefectServer) -> None:
    """Pause the monitor's interval schedule and drop the runs it already queued: the tests start the monitor when
    its log is ready; an hourly run due at deploy time would judge a project with no model yet."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateName)

    with server.client() as client:
        [monitor] = [d for d in client.read_deployments() if d.name == "monitor"]
        for schedule in monitor.schedules:
            client.update_deployment_schedule(monitor.id, schedule.id, active=False)
        queued = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[monitor.id])),
                                       flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                                           name=FlowRunFilterStateName(any_=["Scheduled"]))))
        for flow_run in queued:
            client.delete_flow_run(flow_run.id)


def start_run(server: PrefectServer, project: Path, name: str, *args: str) -> str:
    """`prefect deployment run NAME ARGS`; returns the flow run's id."""
    done = server.cli("deployment", "run", name, *args, cwd=project)
    return re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)


def create_run(server: PrefectServer, deployment: str, **parameters) -> str:
    """A flow run of a deployment created through the API, due now; returns its id."""
    with server.client() as client:
        [found] = [d for d in client.read_deployments() if d.name == deployment]
        return str(client.create_flow_run_from_deployment(found.id, parameters=parameters).id)


def finished(server: PrefectServer, run_id: str, timeout: float = RUN_TIMEOUT_S):
    """The flow run once its state is final."""
    def final():
        with server.client() as client:
            flow_run = client.read_flow_run(run_id)
        return flow_run if flow_run.state and flow_run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish", server, every=2)


def task_states(server: PrefectServer, run_id: str) -> dict[str, str]:
    """Task run name (less Prefect's random "-1ec" suffix) -> state name, for one flow run and its subflow runs
    (the retraining runs training_pipeline as a subflow)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    states: dict[str, str] = {}
    with server.client() as client:
        flow_ids = [run_id]
        while flow_ids:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_ids)))
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[r.id for r in runs]))) if runs else []
            wrappers = {child.parent_task_run_id for child in children}  # a subflow's stand-in task run
            states.update({re.sub(r"-[0-9a-f]{3}$", "", r.name): r.state.name for r in runs if r.id not in wrappers})
            flow_ids = [child.id for child in children]
    return states


def runs_of(server: PrefectServer, deployment: str) -> list:
    """The flow runs of a deployment, oldest first."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with server.client() as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
                                     sort=FlowRunSort.START_TIME_ASC)


def events_named(server: PrefectServer, name: str) -> list[dict]:
    """The events of this name the server holds (its REST API: the sync client does not read events)."""
    response = httpx.post(f"{server.url}/events/filter", json={"filter": {"event": {"name": [name]}}}, timeout=30)
    response.raise_for_status()
    return response.json()["events"]


def write_drifted_log(project: Path, texts: list[str]) -> str:
    """Score `texts` with the production release as the service would and write them as one prediction-log part
    (texts kept, as with serve.log_texts), stamped a minute ago; returns the version that scored them."""
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.registry.champion import prod_release
    from tasks.serving.predlog import encode_record, make_record, part_name
    from tasks.serving.scoring import load_served

    cfg = load_config(project / "params.yaml")
    move, folder = prod_release(ArtifactPaths(project))
    served = load_served(folder, cfg.serve.model_name, move.version, threads=1)
    try:
        scores = served.score(texts, cfg.serve.max_batch_size)
        labels = served.info.labels
    finally:
        served.close()
    at = time.time() - 60
    log_dir = project / cfg.serve.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    lines = [encode_record(make_record(at, move.version, text, score, labels, log_texts=True))
             for text, score in zip(texts, scores)]
    (log_dir / part_name(at, 0, 0)).write_bytes(b"".join(lines))
    return move.version


def wait_running(server: PrefectServer, run_id: str):
    """The flow run once it is Running (its worker started it)."""
    def running():
        with server.client() as client:
            flow_run = client.read_flow_run(run_id)
        assert not flow_run.state.is_final(), f"{run_id} ended {flow_run.state.name} before it was seen running"
        return flow_run if flow_run.state.is_running() else None

    return wait_for(running, RUN_TIMEOUT_S, f"flow run {run_id} to run", server, every=0.5)


def test_deploy_creates_every_deployment_of_prefect_yaml_on_the_pool(server, project):
    specs = deployments_of(project / "prefect.yaml")
    with server.client() as client:
        deployed = {d.name: d for d in client.read_deployments()}
    assert set(deployed) == set(specs)
    assert {d.work_pool_name for d in deployed.values()} == {POOL}
    nightly = deployed["nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == [specs["nightly"]["schedules"][0]["cron"]]


def test_manually_triggered_retraining_runs_stale_stages_skips_the_rest_and_promotes(server, project):
    run_id = start_run(server, project, full_name(server, "nightly"))
    flow_run = finished(server, run_id)
    assert flow_run.state.name == "Completed", server.logs()
    # The data stages are up to date in dvc.lock: Skipped; the model stages run.
    assert task_states(server, run_id) == {"validate (up to date)": "Skipped", "prepare (up to date)": "Skipped",
                                           **{stage: "Completed" for stage in STAGES[2:]}}
    from tasks.registry.tags import PROD, in_stage

    assert in_stage(project, PROD) is not None  # the gate said PROMOTE (lenient bounds): the registry has prod


def test_scheduled_run_starts_when_due_and_shows_up_to_date_stages_as_skipped(server, project):
    run_id = start_run(server, project, full_name(server, "nightly"), "--start-in", "5 seconds")
    flow_run = finished(server, run_id)
    assert flow_run.state.name == "Completed", server.logs()
    with server.client() as client:
        first = client.read_flow_run_states(run_id)[0]
    assert first.name == "Scheduled" and first.state_details.scheduled_time > first.timestamp  # due later
    assert flow_run.start_time >= first.state_details.scheduled_time  # the worker waited until it was due
    states = task_states(server, run_id)
    # The first run recorded every stage in dvc.lock: each shows as a Completed task run named Skipped.
    assert states == {f"{stage} (up to date)": "Skipped" for stage in STAGES}


def test_monitor_on_a_drifted_log_emits_drift_and_the_event_triggered_retraining_runs(server, project):
    imdb = pd.read_csv(default_data_source()).query("source == 'imdb'")["text"]
    version = write_drifted_log(project, list(imdb.head(DRIFTED_TEXTS)))  # long reviews after short sentences
    monitor_run = finished(server, start_run(server, project, full_name(server, "monitor")))
    assert monitor_run.state.name == "Completed", server.logs()
    [event] = wait_for(lambda: events_named(server, DRIFT_EVENT), 60, DRIFT_EVENT, server)
    assert event["payload"]["version"] == version
    assert "length_ks" in event["payload"]["alarms"]  # 100+ tokens against ~25: the clearest of the alarms
    on_event = triggered_by(deployments_of(project / "prefect.yaml"), DRIFT_EVENT)["name"]
    [triggered] = wait_for(lambda: runs_of(server, on_event), 60, "the triggered retraining", server)
    assert triggered.parameters["reason"] == DRIFT_EVENT
    assert triggered.parameters["event"]["id"] == event["id"]
    retrained = finished(server, triggered.id)
    assert retrained.state.name == "Completed", server.logs()
    # No new labelled data: the same data version, every stage up to date, nothing new to promote.
    assert set(task_states(server, triggered.id).values()) == {"Skipped"}


def test_second_retraining_trigger_during_a_run_is_cancelled_without_starting(server, project):
    on_event = triggered_by(deployments_of(project / "prefect.yaml"), DRIFT_EVENT)["name"]
    first = start_run(server, project, full_name(server, on_event), "--param", "reason=first")
    wait_running(server, first)
    second = finished(server, create_run(server, on_event, reason="second"))  # at once: no CLI start-up
    first_run = finished(server, first)
    assert second.state.name == "Cancelled"  # the deployment's concurrency limit 1, CANCEL_NEW
    with server.client() as client:
        history = [state.type.value for state in client.read_flow_run_states(second.id)]
    assert "RUNNING" not in history and task_states(server, second.id) == {}  # it never ran
    assert second.state.timestamp < first_run.end_time  # ...and was turned away while the first still ran
    assert first_run.state.name == "Completed", server.logs()
