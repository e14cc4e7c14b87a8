"""`monitor run` (the Prefect flow monitor on one window of the prediction log) and `monitor history` (every run's
figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.table import Table

from flows.terminal import console, debugging, prefect_defaults, signals_interrupt


def cmd_monitor_run(args: argparse.Namespace) -> int:
    prefect_defaults()
    from prefect.settings import PREFECT_API_URL

    from flows.console_log import quiet_user_errors
    from flows.ephemeral_api import prefect_api
    from flows.monitoring import monitor

    if not debugging(args):
        quiet_user_errors()
    root = Path(args.project).resolve()
    api = PREFECT_API_URL.value() or "a temporary server for this run"
    console.print(f"[bold]monitor[/] on {root} (Prefect API: {api})", soft_wrap=True)
    with signals_interrupt(), prefect_api():
        result = monitor(project=str(root), window_minutes=args.window_minutes, end=args.end)
        flush_events()  # before a temporary server stops: the events are what starts retraining
    print_monitor_result(result)
    return 0


def flush_events() -> None:
    """Send the events emitted so far (Prefect sends them from a background worker)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)


def print_monitor_result(result: dict) -> None:
    from tasks.monitoring.report import check_verdict, iso, overall_verdict

    table = Table(title=f"monitor: {iso(result['start'])} to {iso(result['end'])}, {result['texts']} texts, "
                        f"version {result['version']}")
    for column in ("check", "value", "bound", "severity", "verdict"):
        table.add_column(column)
    colours = {"pass": "green", "skipped": "dim", "warning": "yellow", "ALARM": "bold red"}
    for check in result["checks"]:
        verdict = check_verdict(check)
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        table.add_row(check["name"], value, f"{check['threshold']:.4g}", check["severity"],
                      f"[{colours[verdict]}]{verdict}[/]")
    console.print(table)
    console.print(f"verdict: {overall_verdict(result)}; new labelled rows: {result['new_rows']}; events: "
                  f"{', '.join(result['events']) or 'none'}", soft_wrap=True, highlight=False)
    console.print(f"report: {result['report']['html']}", soft_wrap=True, markup=False, highlight=False)


def cmd_monitor_history(args: argparse.Namespace) -> int:
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.monitoring.history import NARROW_MAX_WIDTHS, history_path, history_table, read_history

    root = Path(args.project).resolve()
    path = history_path(root, load_config(ArtifactPaths(root).params).monitor.history)
    rows = read_history(path, args.last)
    if not rows:
        console.print(f"no monitor runs recorded yet in {path} (tunegate monitor run)", soft_wrap=True,
                      markup=False, highlight=False)
        return 0
    columns, cells = history_table(rows, wide=args.wide)
    # Narrow: padding collapsed and no edges, so the flagged checks keep what width the estimate leaves them.
    table = Table(title=f"monitor history ({path.name}, {len(rows)} runs)", box=box.SIMPLE_HEAD,
                  collapse_padding=not args.wide, show_edge=args.wide)
    for i, column in enumerate(columns):  # the figures wrap; the end and version stay whole
        table.add_column(column.replace("_", " ") if args.wide else column, no_wrap=i < 2, overflow="fold",
                         max_width=None if args.wide else NARROW_MAX_WIDTHS.get(column))
    for row in cells:
        table.add_row(*row)
    console.print(table)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """monitor run, monitor history."""
    watch = sub.add_parser("monitor", help="judge live traffic against the production model's training data",
                           description="`monitor run`: the Prefect flow monitor on one window of the prediction "
                                       "log; `monitor history`: every run's figures.")
    watch_sub = watch.add_subparsers(dest="monitor_command", required=True)
    watch_run = watch_sub.add_parser(
        "run", help="run the monitor flow once and print each check's verdict",
        description="Read the last monitor.window_minutes of the prediction log (serve.log_dir) and any new "
                    "labelled files (monitor.labelled_dir), compare them with the production model's training data "
                    "(the registry's prod version through DVC; without one, serve.model's folder and "
                    "artifacts/prepare/train.parquet), write .tunegate/monitoring/reports/TIME.{md,html}, publish "
                    "the Prefect artifact `monitoring`, append to monitor.history, and emit tunegate.drift.detected "
                    "(an alarm-severity check failed) and tunegate.data.arrived (monitor.min_new_rows new labelled "
                    "rows). Uses PREFECT_API_URL when set, else a temporary Prefect server. Exits 0 whatever the "
                    "verdict.")
    watch_run.add_argument("--window-minutes", type=float, default=None, metavar="M",
                           help="window length (default: monitor.window_minutes)")
    watch_run.add_argument("--end", default=None, metavar="TIME",
                           help="window end, ISO 8601 (UTC without an offset; default: now)")
    watch_run.add_argument("--project", default=".", help="project root (default: current folder)")
    watch_run.set_defaults(func=cmd_monitor_run)
    watch_history = watch_sub.add_parser("history", help="every monitor run's figures as a table",
                                         description="One row per monitor run (monitor.history), oldest first: "
                                                     "window end, version, texts, verdict, new labelled rows and "
                                                     "the checks that alarmed or warned, with their figures. "
                                                     "--wide: each check's figure in a column of its own "
                                                     "('-': skipped).")
    watch_history.add_argument("--last", type=int, default=None, metavar="N", help="only the last N runs")
    watch_history.add_argument("--wide", action="store_true",
                               help="one column per check (for a terminal wider than 80 columns)")
    watch_history.add_argument("--project", default=".", help="project root (default: current folder)")
    watch_history.set_defaults(func=cmd_monitor_history)
