"""The `tunegate` command line: the top-level parser, the parent parsers commands share, and main (errors and exit
codes). Each command group's module holds its handlers beside the function that registers their parsers:
pipeline (run, stage, data default, validate), scoring (predict, batch-score), serving (schedule, serve),
promotion (ci pr/main, promote, rollback), registry (verify, history, models, card), monitoring (monitor run/history),
label_queue (label-queue), label_issues (label-issues), shadow (shadow), tune (tune).

`tunegate serve` builds this whole parser on the serving install: no module here imports a pipeline package
(Prefect, torch, transformers, pandas, ...) at module level; handlers import what they need when they run."""

from __future__ import annotations

import argparse

from flows.cli import (label_issues, label_queue, monitoring, pipeline, promotion, registry, scoring, serving, shadow,
                       tune)
from flows.terminal import debugging, errors, report_error
from tasks.core.errors import TunegateError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunegate",
        description="Fine-tune, validate, evaluate, export and gate transformer text classifiers. "
                    "Run from the project root (where params.yaml and dvc.yaml live).",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of expected errors (bad data, bad params) too; or TUNEGATE_DEBUG=1")
    # A metavar, not argparse's {run,stage,...} list: that list is over 100 characters on one line.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    overrides = argparse.ArgumentParser(add_help=False)  # what run and schedule share
    overrides.add_argument("-S", "--set", action="append", metavar="SECTION.KEY=VALUE",
                           help="override a value in params.yaml before running (written there, as "
                                "`dvc exp run -S` does); repeatable")
    overrides.add_argument("--project", default=".", help="project root (default: current folder)")
    repository = argparse.ArgumentParser(add_help=False)  # the registry's commands
    repository.add_argument("--project", default=".", help="project root, a git repository (default: current folder)")
    stage_move = argparse.ArgumentParser(add_help=False, parents=[repository])  # what promote and rollback share
    stage_move.add_argument("--stage", default="prod", help="stage to move (default: prod; one of .gto's stages)")
    stage_move.add_argument("--push", nargs="?", const="origin", metavar="REMOTE",
                            help="then `git push REMOTE` the tags (REMOTE default: origin)")

    # In this order: it is the order of `tunegate --help`.
    pipeline.add_commands(sub, overrides)
    scoring.add_commands(sub)
    serving.add_commands(sub, overrides)
    promotion.add_commands(sub, repository, stage_move)
    registry.add_commands(sub, repository)
    monitoring.add_commands(sub)
    label_queue.add_commands(sub)
    label_issues.add_commands(sub)
    shadow.add_commands(sub)
    tune.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunegateError as exc:
        report_error("error", exc, debugging(args))
        return 1
    except KeyboardInterrupt:
        errors.print(f"tunegate {args.command} interrupted", style="bold yellow")
        return 130
