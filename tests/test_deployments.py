"""Deployments (prefect.yaml, `tunegate schedule`), the notification automations, and the retraining flow's steps:
a new data version on a branch, and promotion only on the gate's PROMOTE."""

from __future__ import annotations

import inspect
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import deployments as dep
from flows import retrain as rt
from tasks.monitoring import data_version as dv
from tasks.core.config import load_config, parse_config
from tests.conftest import BIN, REPO, keyword_reviews, run, tiny_params

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
NO_MODEL = Path("no-model")  # params that are never trained on need no model


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))


def yaml_deployments() -> dict[str, dict]:
    return {d["name"]: d for d in prefect_yaml()["deployments"]}


def repo_specs() -> dict[str, dep.DeploymentSpec]:
    return {s.name: s for s in dep.deployment_specs(load_config(REPO / "params.yaml"), ".")}


# --- prefect.yaml --------------------------------------------------------------------------------------------------


def test_prefect_yaml_is_valid_for_prefect_deploy():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    model = PrefectYamlModel.model_validate(prefect_yaml())
    assert {d.name for d in model.deployments} == {dep.NIGHTLY, dep.MONITOR, dep.RETRAIN_ON_EVENT}
    for deployment in model.deployments:
        assert deployment.work_pool.name == dep.WORK_POOL
        # What `prefect deploy` does with the triggers (after templating, which leaves "{{ event }}" alone).
        _initialize_deployment_triggers(deployment.name, [dict(t) for t in deployment.triggers or []])


@pytest.mark.parametrize("name", [dep.NIGHTLY, dep.MONITOR, dep.RETRAIN_ON_EVENT])
def test_prefect_yaml_entrypoints_name_flows_that_take_the_parameters_given(name):
    from prefect import Flow

    deployment = yaml_deployments()[name]
    flow = dep._flow_of(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    accepted = set(inspect.signature(flow.fn).parameters)
    given = set(deployment.get("parameters", {}))
    for trigger in deployment.get("triggers", []):
        given |= set(trigger.get("parameters", {}))
    assert given <= accepted, f"{name} passes {sorted(given - accepted)}, which {deployment['entrypoint']} lacks"


def test_prefect_yaml_schedules_equal_params():
    cfg = load_config(REPO / "params.yaml")
    deployments = yaml_deployments()
    assert deployments["nightly"]["schedules"] == [{"cron": cfg.orchestration.nightly_cron, "timezone": "UTC"}]
    assert deployments["monitor"]["schedules"] == [{"interval": cfg.monitor.every_minutes * 60}]
    assert "schedules" not in deployments["retrain-on-event"]


def test_prefect_yaml_equals_what_tunegate_schedule_serves():
    for name, spec in repo_specs().items():
        declared = yaml_deployments()[name]
        assert declared["entrypoint"] == spec.entrypoint
        assert declared["parameters"] == spec.parameters
        assert declared.get("triggers", []) == spec.triggers
        assert declared["concurrency_limit"] == {"limit": spec.concurrency_limit,
                                                 "collision_strategy": spec.collision_strategy}
        assert declared["description"] == spec.description


def test_retrain_trigger_fires_on_the_events_the_monitor_emits_for_its_model():
    from flows.monitoring import DATA_EVENT, DRIFT_EVENT, RESOURCE_PREFIX

    trigger, = yaml_deployments()["retrain-on-event"]["triggers"]
    cfg = load_config(REPO / "params.yaml")
    assert trigger["type"] == "event"
    assert set(trigger["expect"]) == {DRIFT_EVENT, DATA_EVENT}
    assert trigger["match"] == {"prefect.resource.id": f"{RESOURCE_PREFIX}{cfg.serve.model_name}"}
    assert (trigger["posture"], trigger["threshold"]) == ("Reactive", 1)  # either event, once, starts a run
    assert trigger["parameters"]["event"] == "{{ event }}"


def test_retrainings_run_one_at_a_time():
    for name in (dep.NIGHTLY, dep.RETRAIN_ON_EVENT):
        assert yaml_deployments()[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


# --- tunegate schedule ---------------------------------------------------------------------------------------------


def test_runner_deployments_carry_the_schedules_trigger_and_limit_of_prefect_yaml():
    served = {d.name: d for d in dep.runner_deployments(REPO / "params.yaml")}
    cfg = load_config(REPO / "params.yaml")
    nightly = served["nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == (cfg.orchestration.nightly_cron, "UTC")
    assert served["monitor"].schedules[0].schedule.interval.total_seconds() == cfg.monitor.every_minutes * 60
    trigger, = served["retrain-on-event"].triggers
    assert trigger.expect == set(yaml_deployments()["retrain-on-event"]["triggers"][0]["expect"])
    for deployment in served.values():
        assert deployment.concurrency_limit == 1
        assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert deployment.parameters["project"] == str(REPO)


def test_schedule_serves_three_deployments_with_its_flags(monkeypatch, tmp_path):
    import prefect

    from flows.cli import main

    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    assert main(["schedule", "--project", str(REPO), "--name", "night", "--cron", "30 1 * * *",
                 "-S", "train.epochs=1"]) == 0
    by_name = {d.name: d for d in served}
    assert set(by_name) == {"night", "monitor", "retrain-on-event"}
    assert by_name["night"].schedules[0].schedule.cron == "30 1 * * *"
    assert by_name["night"].parameters["overrides"] == ["train.epochs=1"]
    assert by_name["retrain-on-event"].triggers[0].parameters["overrides"] == ["train.epochs=1"]
    assert "overrides" not in by_name["monitor"].parameters


# --- automations ---------------------------------------------------------------------------------------------------


def test_automations_spec_parses_and_notifies_on_failed_runs_and_on_drift():
    from prefect.events.schemas.automations import AutomationCore

    from flows.monitoring import DRIFT_EVENT

    spec = yaml.safe_load((REPO / "deploy" / "prefect" / "automations.yaml").read_text(encoding="utf-8"))
    automations = [AutomationCore.model_validate(a) for a in spec["automations"]]
    expected = [a.trigger.expect for a in automations]
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} in expected
    assert {DRIFT_EVENT} in expected
    assert all(action.type == "send-notification" for a in automations for action in a.actions)


# --- the retraining flow's rules -----------------------------------------------------------------------------------


def test_branch_name_is_prefix_and_utc_time():
    assert dv.branch_name("retrain/", NOW) == "retrain/20260102T030405Z"


def test_version_file_never_reuses_the_data_file_and_drops_an_earlier_stamp(tmp_path):
    original = tmp_path / "data" / "reviews.csv"
    assert dv.version_file(original, False, NOW).name == "reviews.20260102T030405Z.csv"
    again = dv.version_file(dv.version_file(original, False, datetime(2025, 1, 1, tzinfo=timezone.utc)), False, NOW)
    assert again.name == "reviews.20260102T030405Z.csv"
    assert dv.version_file(tmp_path / "data", True, NOW) == tmp_path / "data" / "arrived.20260102T030405Z.csv"


def test_fill_columns_marks_the_source_of_arrived_rows():
    cfg = parse_config(tiny_params(NO_MODEL))
    new = pd.DataFrame({"text": ["fine film"], "label": [1]})
    shaped = dv.fill_columns(new, ["text", "label", "source", "year"], cfg.data)
    assert shaped.to_dict("records") == [{"text": "fine film", "label": 1, "source": dv.ARRIVED_SOURCE, "year": None}]


def test_unused_rows_warning_when_prepare_sources_leaves_arrived_rows_out():
    cfg = parse_config(tiny_params(NO_MODEL))
    assert cfg.prepare.sources and dv.ARRIVED_SOURCE not in cfg.prepare.sources
    assert "not trained on" in dv.unused_rows_warning(cfg, 10)
    raw = tiny_params(NO_MODEL)
    raw["prepare"]["sources"] = [*cfg.prepare.sources, dv.ARRIVED_SOURCE]
    assert dv.unused_rows_warning(parse_config(raw), 10) is None
    assert dv.unused_rows_warning(cfg, 0) is None


@pytest.mark.parametrize(("decision", "already", "promotes"), [
    ("PROMOTE", None, True), ("REJECT", None, False), ("INCONCLUSIVE", None, False),
    ("PROMOTE", "prod already holds this model (v0.2.0)", False)])
def test_promotion_verdict_promotes_only_a_new_model_the_gate_promotes(decision, already, promotes):
    go, why = rt.promotion_verdict({"decision": decision, "why": "figures"}, already)
    assert go is promotes
    assert decision in why


@pytest.mark.parametrize("verdict", ["PROMOTE", "REJECT"])
def test_promote_step_calls_the_registry_only_on_promote(verdict, monkeypatch, tmp_path):
    import tasks.registry.promote

    decision = tmp_path / "artifacts" / "gate" / "decision.json"
    decision.parent.mkdir(parents=True)
    decision.write_text(json.dumps({"decision": verdict, "why": "stand-in gate", "candidate": {"sha256": "x"}}))
    calls = []

    class Done:
        version, stage, tags = "v0.2.0", "prod", ["tunegate@v0.2.0", "tunegate#prod#2"]

    monkeypatch.setattr(tasks.registry.promote, "promote", lambda root, **kw: calls.append((root, kw)) or Done())
    monkeypatch.setattr(tasks.registry.promote, "already_registered", lambda root, decision: None)
    result = rt.promote_step(tmp_path, parse_config(tiny_params(NO_MODEL)))
    assert result["decision"] == verdict
    if verdict == "PROMOTE":
        assert calls == [(tmp_path, {"push": None})]
        assert result["version"] == "v0.2.0"
    else:
        assert calls == []
        assert "REJECT" in result["why_not"] and "stand-in gate" in result["why_not"]


def test_render_summary_says_what_happened():
    text = rt.render_summary({"outcome": "not promoted", "project": "/p", "reason": "tunegate.drift.detected",
                              "event": {"event": "tunegate.drift.detected", "id": "e1", "occurred": "t"},
                              "decision": "REJECT", "why_not": "gate REJECT: accuracy", "warnings": ["w"]})
    assert "# Retraining: not promoted" in text and "gate REJECT: accuracy" in text and "tunegate.drift.detected" in text


# --- the data step on a real git + DVC project (e2e) ---------------------------------------------------------------


def test_add_data_version_commits_new_rows_on_a_branch_and_fills_the_ledger(make_project):
    from tasks.core.dvc_data import data_differences
    from tasks.monitoring.arrivals import new_labelled, read_ledger

    params = tiny_params(NO_MODEL)
    params["monitor"]["labelled_dir"] = "incoming"
    root = make_project(frame=keyword_reviews(60), params=params)
    original = (root / "data" / "movie_reviews.csv").read_bytes()
    (root / "incoming").mkdir()
    keyword_reviews(12, seed=1)[["text", "label"]].to_csv(root / "incoming" / "batch-1.csv", index=False)
    cfg = load_config(root / "params.yaml")
    new, arrivals = new_labelled(root, cfg)

    version = dv.add_data_version(root, cfg, new, arrivals, NOW)

    assert version.branch == "retrain/20260102T030405Z" == run(["git", "branch", "--show-current"], root).stdout.strip()
    assert (root / "data" / "movie_reviews.csv").read_bytes() == original  # never rewritten
    assert load_config(root / "params.yaml").data.path == version.file == "data/movie_reviews.20260102T030405Z.csv"
    table = pd.read_csv(root / version.file)
    assert len(table) == 72 and (table["source"] == dv.ARRIVED_SOURCE).sum() == 12
    assert data_differences(root) == []  # data.dvc records the new version
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root).stdout == ""
    assert "data.dvc" in run(["git", "show", "--name-only", "HEAD"], root).stdout
    assert read_ledger(root) == {"batch-1.csv": {arrivals[0].sha256: 12}}
    assert new_labelled(root, load_config(root / "params.yaml"))[1] == []  # taken: nothing new next time
    # The previous version stays reachable: main's data.dvc still names the old data.
    assert run([str(BIN / "dvc"), "status", "--json"], root).returncode == 0


def test_retrain_on_a_busy_workspace_ends_cancelled_not_failed(monkeypatch, tmp_path):
    from contextlib import contextmanager

    from flows.workspace import WorkspaceBusy

    @contextmanager
    def busy(paths, command):
        raise WorkspaceBusy(tmp_path / "run.lock", {"command": "retrain flow (nightly)", "pid": 1, "started": "t"})
        yield

    monkeypatch.setattr(rt, "workspace_lock", busy)
    state = rt.retrain.fn(project=str(tmp_path), reason="tunegate.drift.detected")
    assert state.is_cancelled() and "retrain flow (nightly)" in state.message
