"""`tunegate run`: the training pipeline through a Prefect flow, its summary table, and why dvc.lock changed when
it came from a CPU of other numerics. CI (flows/ci.py) runs the pipeline through it too."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from flows.terminal import console, debugging, errors, prefect_defaults, report_error, signals_interrupt


def cmd_run(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.workspace import workspace_lock
    from tasks.core.lock_cpu import committed_lock_cpus
    from tasks.core.paths import ArtifactPaths

    paths = ArtifactPaths(Path(args.project).resolve())
    # Taken before the Prefect server starts, so a busy workspace fails in a second; the flow re-enters it.
    with workspace_lock(paths, "tunegate run"), signals_interrupt():
        committed = committed_lock_cpus(paths)  # before the run rewrites the work tree's record
        from prefect.settings import PREFECT_API_URL

        from flows.console_log import quiet_user_errors
        from flows.ephemeral_api import prefect_api
        from flows.pipeline import PipelineFailed, training_pipeline

        if not debugging(args):
            quiet_user_errors()
        console.print(f"[bold]training_pipeline[/] on {paths.root} "
                      f"(Prefect API: {PREFECT_API_URL.value() or 'a temporary server for this run'})", soft_wrap=True)
        try:
            with prefect_api():
                outcomes = training_pipeline(overrides=args.set or None, project=str(paths.root))
        except KeyboardInterrupt as stop:
            errors.print(f"tunegate run interrupted{f' ({stop})' if str(stop) else ''}: stages that finished are "
                         "recorded in dvc.lock; the stage that was running kept its last good outputs (an "
                         "interrupted train resumes from its checkpoints in .tunegate/).", style="bold yellow")
            return 130
        except PipelineFailed as failed:
            print_summary(failed.outcomes)
            print_lock_cpu_note(committed)
            report_error(f"pipeline stopped at {failed.outcomes[-1].stage}", failed.cause, debugging(args))
            return 1
    print_summary(outcomes)
    print_lock_cpu_note(committed)
    return 0


def print_lock_cpu_note(committed: dict) -> None:
    """Why dvc.lock changed, when the committed one came from a CPU of other numerics (nothing otherwise)."""
    from tasks.core.host import cpu_facts
    from tasks.core.lock_cpu import foreign_lock_note

    for line in foreign_lock_note(committed, cpu_facts()):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_summary(outcomes: list) -> None:
    table = Table(title="tunegate pipeline")
    for column in ("stage", "status", "duration", "key figure"):
        table.add_column(column)
    colours = {"completed": "green", "skipped": "cyan", "failed": "red", "unrecorded": "yellow"}
    for o in outcomes:
        table.add_row(o.stage, f"[{colours[o.status]}]{o.status}[/]", f"{o.seconds:.1f} s", o.key_figure)
    console.print(table)
    for o in outcomes:
        if o.note:
            errors.print(f"{o.stage}: {o.note}", style="yellow", markup=False, highlight=False)
