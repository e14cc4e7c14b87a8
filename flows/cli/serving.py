"""The two commands that block and serve: `schedule` (prefect.yaml's deployments, run here) and `serve` (the HTTP
inference service, which had the name first: its old scheduling flags only say where they went).

`tunegate serve` builds the whole parser on the serving install: nothing here imports Prefect, torch or
transformers at module level (tests/test_serve_install.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.terminal import errors, prefect_defaults


def cmd_schedule(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.deployments import serve_all

    # The nightly retraining, the monitor and the event-triggered retraining, as prefect.yaml declares them.
    serve_all(Path(args.project).resolve() / "params.yaml", args.set or None, args.name, args.cron)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Only FastAPI, uvicorn, onnxruntime and tokenizers on this path: no Prefect, torch or transformers.
    if args.cron is not None or args.name is not None or args.set:
        errors.print("tunegate serve is now the HTTP inference service; the scheduled Prefect deployment moved to "
                     "`tunegate schedule` (same flags: --name, --cron, -S, --project)", style="bold red", markup=False)
        return 2
    from tasks.core.config import ServeConfig
    from tasks.runtime.settings import load_serve_settings
    from tasks.serving.service import run_service

    root = Path(args.project).resolve()
    params = root / "params.yaml"
    flags = {name: getattr(args, name) for name in ServeConfig.model_fields}
    run_service(load_serve_settings(params if params.is_file() else None, flags), root)
    return 0


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per serve setting, generated from ServeConfig (its description, params.yaml key, variable)."""
    from tasks.core.config import ServeConfig
    from tasks.runtime.settings import ENV_PREFIX

    for name, field in ServeConfig.model_fields.items():
        where = f"params.yaml serve.{name}; env {ENV_PREFIX}{name.upper()}"
        flag = "--" + name.replace("_", "-")
        kind = next((t for t in (bool, int, float, list) if t is field.annotation or t in getattr(
            field.annotation, "__args__", ()) or getattr(field.annotation, "__origin__", None) is t), str)
        help_text = f"{field.description} ({where})"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is list:
            parser.add_argument(flag, dest=name, nargs="*", metavar="ITEM", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(), help=help_text)


def add_commands(sub: argparse._SubParsersAction, overrides: argparse.ArgumentParser) -> None:
    """schedule, serve; `overrides` is the -S/--project parent `schedule` shares with `run`."""
    schedule = sub.add_parser("schedule", parents=[overrides],
                              help="serve the nightly retraining, the monitor and the event-triggered retraining "
                                   "as Prefect deployments (blocks)",
                              description="Create prefect.yaml's three deployments on the Prefect API in "
                                          "PREFECT_API_URL and run their flow runs here until stopped, without a "
                                          "work pool: the nightly retraining (cron, orchestration.nightly_cron), "
                                          "the monitor (every monitor.every_minutes) and the retraining that the "
                                          "monitor's events tunegate.drift.detected / tunegate.data.arrived start "
                                          "(one at a time). -S overrides go to both retrainings. (Called `tunegate "
                                          "serve` before that became the HTTP service.)")
    schedule.add_argument("--name", default="nightly", help="name of the nightly deployment (default: nightly)")
    schedule.add_argument("--cron", default=None, help="the nightly schedule, UTC (default: params.yaml's "
                                                       "orchestration.nightly_cron)")
    schedule.set_defaults(func=cmd_schedule)

    serve = sub.add_parser("serve", help="the HTTP inference service for the production model (blocks)",
                           description="Serve a shipped model folder (serve.model, default artifacts/gate/release) "
                                       "or the registry's version in a stage (registry:prod) over HTTP with "
                                       "FastAPI + uvicorn + onnxruntime: /v1/predict, /v2/health/live, "
                                       "/v2/health/ready, /v2/models/NAME, /v2/repository/models/NAME/load, "
                                       "/metrics, /openapi.json. Each setting comes from (highest first) its flag, "
                                       "its TUNEGATE_ variable, then params.yaml's serve section. API keys: "
                                       "serve.api_keys_file or TUNEGATE_API_KEYS=key1,key2. SIGTERM or Ctrl-C "
                                       "stops it after the requests in flight. The scheduled Prefect deployment "
                                       "is `tunegate schedule`.")
    serve.add_argument("--project", default=".", help="project root: its params.yaml, and where relative "
                                                      "serve.model and serve.log_dir are (default: current folder)")
    add_serve_flags(serve)
    # The scheduling command's flags, kept only to say where it went.
    serve.add_argument("--cron", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--name", default=None, help=argparse.SUPPRESS)
    serve.add_argument("-S", "--set", action="append", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
