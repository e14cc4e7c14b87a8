"""`tune`: search train/distill keys with Optuna, each trial a DVC experiment; `--apply` writes the chosen recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from flows.terminal import console


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def trials_table(rows: list[Any], best: int) -> Table:
    """One row per trial: number, how it ended, dev accuracy, seconds, and its recipe (wrapped to fit 80 columns)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("trial", "state", "dev acc", "s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("recipe", overflow="fold")
    from tasks.judging.selection import recipe_text

    for row in rows:
        value = "-" if row.value is None else f"{row.value:.4f}"
        state = row.state.lower() + (" *" if row.number == best else "")
        table.add_row(str(row.number), state, value, "-" if row.seconds is None else f"{row.seconds:.0f}",
                      recipe_text(row.params) + (f" ({row.note})" if row.note else ""))
    return table


def print_record(rows: list[Any], record: dict[str, Any]) -> None:
    search = record["search"]
    best, spread = search["best"], search["spread"]
    _say(f"study {search['study']} ({search['storage']}): {search['trials']} trials, {search['complete']} finished, "
         f"{search['pruned']} stopped early, {search['failed']} failed; judged by {search['metric']}")
    console.print(trials_table(rows, best["trial"]))
    default = search.get("default")
    against = f" against the params.yaml recipe's {default['dev']:.4f} (trial {default['trial']})" if default else ""
    _say(f"best (*): trial {best['trial']}, experiment {best['experiment']}: dev accuracy {best['dev']:.4f}{against}; "
         f"finished trials ran from {spread['min']:.4f} to {spread['max']:.4f}")


def cmd_tune(args: argparse.Namespace) -> int:
    from tasks.core.config import apply_overrides, override, parse_config, read_params
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.selection import write_selection
    from tasks.tuning.study import open_study, run_search, study_record, trial_rows

    paths = ArtifactPaths(Path(args.project).resolve())
    flags = {"trials": args.trials, "timeout_minutes": args.minutes, "workers": args.workers, "study": args.study,
             "storage": args.storage}
    cfg = parse_config(apply_overrides(read_params(paths.params),
                                       [override(f"tune.{key}", value) for key, value in flags.items()
                                        if value is not None]))
    if args.show:
        study, shown = open_study(cfg, paths, create=False)
        record = study_record(study, shown)
    else:
        record = run_search(cfg, paths, _say)
        study, _ = open_study(cfg, paths, create=False)  # this call's trials, for the table
    if args.json:
        print(json.dumps(record))
    else:
        print_record(trial_rows(study), record)
    if args.apply:
        from tasks.core.config import write_overrides

        best = record["search"]["best"]
        write_overrides(paths.params, [override(key, value) for key, value in best["params"].items()])
        write_selection(paths.selection, record)
        _say(f"applied trial {best['trial']}: params.yaml now holds its values and {paths.selection.name} records the "
             f"search; `dvc exp apply {best['experiment']}` restores that trial's outputs, else `dvc repro` "
             "trains it again")
    elif not args.json:
        _say("params.yaml is unchanged: `tunegate tune --show --apply` writes the best trial's values there")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """tune."""
    tune = sub.add_parser(
        "tune", help="search train/distill settings (Optuna); each trial is a DVC experiment, chosen on dev",
        description="Run an Optuna study (TPE, seeded) over params.yaml's tune.space: each trial is `dvc exp run "
                    "--temp` up to train (or distill, when a distill key is searched), named <study>-<number>, and "
                    "scored by that stage's dev accuracy; test is never read. Trial 0 is params.yaml's own recipe. "
                    "Poor trials are stopped after an epoch (tune.pruning). The budget is tune.trials (the whole "
                    "study's) and tune.timeout_minutes (this call's). Workers on other hosts join the same study "
                    "through tune.storage. `dvc exp show` compares the trials; params.yaml changes only with --apply.",
    )
    tune.add_argument("--project", default=".", help="project root, a git + DVC repository (default: current folder)")
    tune.add_argument("--trials", type=int, help="trials in the study at most (default: tune.trials)")
    tune.add_argument("--minutes", type=float, help="this call's time budget (default: tune.timeout_minutes)")
    tune.add_argument("--workers", type=int, help="trials at once on this host (default: tune.workers)")
    tune.add_argument("--study", help="the study's name (default: tune.study)")
    tune.add_argument("--storage", help="a journal file or database URL shared by hosts (default: tune.storage)")
    tune.add_argument("--show", action="store_true", help="run nothing: show the study's trials so far")
    tune.add_argument("--apply", action="store_true",
                      help="write the best trial's values to params.yaml and the search's record to tuning.json")
    tune.add_argument("--json", action="store_true", help="print the search's record as one JSON line")
    tune.set_defaults(func=cmd_tune)
