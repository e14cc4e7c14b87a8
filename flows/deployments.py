"""tunegate's three deployments, built from params.yaml: `nightly` (cron, the retraining), `monitor` (every
monitor.every_minutes) and `retrain-on-event` (the monitor's events). prefect.yaml declares the same three for a
work pool; `tunegate schedule` serves these on one machine (tests/test_deployments.py checks that they agree).

For the tests against a real Prefect server (tests/test_prefect_server.py): `deployment_specs` is what both
forms must hold; `runner_deployments` gives the RunnerDeployments that `prefect.serve(*deployments)` runs; the
event trigger of `retrain-on-event` fires on either event for the resource tunegate.model.<serve.model_name>
(flows/monitoring.py emits both on it), and its concurrency limit 1 with CANCEL_NEW cancels a second retraining
that starts while one runs (its flow run ends Cancelled; the monitor raises the event again while drift lasts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.config import PipelineConfig

WORK_POOL = "tunegate"  # the process work pool of prefect.yaml (docs/monitoring.md, "Scheduling and the closed loop")
NIGHTLY, MONITOR, RETRAIN_ON_EVENT = "nightly", "monitor", "retrain-on-event"
ENTRYPOINTS = {NIGHTLY: "flows/retrain.py:retrain", MONITOR: "flows/monitoring.py:monitor",
               RETRAIN_ON_EVENT: "flows/retrain.py:retrain"}
# CANCEL_NEW, not ENQUEUE: while a retraining runs (hours on a CPU), the monitor raises the event every window;
# queued runs would each retrain again on the same data afterwards. A cancelled trigger loses nothing: files not
# taken stay new in the arrivals ledger and drift that lasts is raised again.
COLLISION_STRATEGY = "CANCEL_NEW"
CRON_TIMEZONE = "UTC"  # orchestration.nightly_cron is read in UTC
# What a triggered run receives: the event's name as the reason, and the whole event (rendered by the Prefect
# server: a single "{{ ... }}" expression keeps its JSON type, so `event` arrives as a dict).
EVENT_PARAMETERS = {"reason": "{{ event.event }}", "event": "{{ event }}"}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as prefect.yaml and `tunegate schedule` both declare it."""

    name: str
    entrypoint: str
    parameters: dict[str, Any]
    cron: str | None = None
    interval_seconds: float | None = None
    triggers: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    description: str = ""


def retrain_trigger(cfg: PipelineConfig, project: str) -> dict[str, Any]:
    """The event trigger of `retrain-on-event`, as prefect.yaml spells it (`type: event`)."""
    from flows.monitoring import DATA_EVENT, DRIFT_EVENT, RESOURCE_PREFIX

    return {"type": "event", "enabled": True,
            "match": {"prefect.resource.id": f"{RESOURCE_PREFIX}{cfg.serve.model_name}"},
            "expect": [DRIFT_EVENT, DATA_EVENT], "posture": "Reactive", "threshold": 1,
            "parameters": {"project": project, **EVENT_PARAMETERS}}


def deployment_specs(cfg: PipelineConfig, project: str = ".", overrides: list[str] | None = None,
                     nightly_name: str = NIGHTLY, nightly_cron: str | None = None) -> list[DeploymentSpec]:
    """The three deployments from params: the nightly cron (orchestration.nightly_cron unless given), the monitor's
    interval (monitor.every_minutes) and the retraining trigger; `overrides` go to both retrainings."""
    retrain_params: dict[str, Any] = {"project": project}
    if overrides:
        retrain_params["overrides"] = list(overrides)
    trigger = retrain_trigger(cfg, project)
    if overrides:
        trigger["parameters"]["overrides"] = list(overrides)
    return [
        DeploymentSpec(nightly_name, ENTRYPOINTS[NIGHTLY], {**retrain_params, "reason": "nightly"},
                       cron=nightly_cron or cfg.orchestration.nightly_cron, concurrency_limit=1,
                       collision_strategy=COLLISION_STRATEGY,
                       description="Nightly retraining: new labelled data as a new data version, the pipeline, "
                                   "promotion only on the gate's PROMOTE."),
        DeploymentSpec(MONITOR, ENTRYPOINTS[MONITOR], {"project": project},
                       interval_seconds=cfg.monitor.every_minutes * 60, concurrency_limit=1,
                       collision_strategy=COLLISION_STRATEGY,
                       description="Live traffic against the production model's training data; emits "
                                   "tunegate.drift.detected / tunegate.data.arrived."),
        DeploymentSpec(RETRAIN_ON_EVENT, ENTRYPOINTS[RETRAIN_ON_EVENT], retrain_params, triggers=[trigger],
                       concurrency_limit=1, collision_strategy=COLLISION_STRATEGY,
                       description="Retraining started by the monitor's events; one at a time."),
    ]


def _flow_of(entrypoint: str) -> Any:
    """The flow object an entrypoint (`path.py:name`) names, imported as a module of this package."""
    from importlib import import_module

    path, name = entrypoint.split(":")
    return getattr(import_module(path.removesuffix(".py").replace("/", ".")), name)


def runner_deployment(spec: DeploymentSpec) -> Any:
    """A RunnerDeployment for `prefect.serve`: same schedule, trigger and concurrency limit as prefect.yaml's."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger

    triggers = [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"}) for t in spec.triggers]
    limit = None
    if spec.concurrency_limit is not None:
        limit = ConcurrencyLimitConfig(limit=spec.concurrency_limit,
                                       collision_strategy=ConcurrencyLimitStrategy(spec.collision_strategy))
    from prefect.schedules import Cron, Interval

    # Cron in UTC, as prefect.yaml says (a bare cron string would take the serving machine's zone).
    schedules = ([Cron(spec.cron, timezone=CRON_TIMEZONE)] if spec.cron else []) + (
        [Interval(spec.interval_seconds)] if spec.interval_seconds else [])
    return _flow_of(spec.entrypoint).to_deployment(
        name=spec.name, schedules=schedules or None, parameters=spec.parameters, triggers=triggers or None,
        concurrency_limit=limit, description=spec.description)


def runner_deployments(params: Path, overrides: list[str] | None = None, nightly_name: str = NIGHTLY,
                       nightly_cron: str | None = None) -> list[Any]:
    """The three deployments of the project whose params.yaml is `params`, for `prefect.serve(*deployments)`."""
    from tasks.core.config import load_config

    cfg = load_config(params)
    project = str(params.resolve().parent)
    return [runner_deployment(spec) for spec in deployment_specs(cfg, project, overrides, nightly_name, nightly_cron)]


def serve_all(params: Path, overrides: list[str] | None = None, nightly_name: str = NIGHTLY,
              nightly_cron: str | None = None) -> None:
    """Create the three deployments on the Prefect API (PREFECT_API_URL) and run their flow runs here until stopped."""
    from prefect import serve

    serve(*runner_deployments(params, overrides, nightly_name, nightly_cron))
