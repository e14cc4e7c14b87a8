"""Scoring with a shipped ONNX folder: `predict` (texts or one file, in this process) and `batch-score` (many files
or Parquet row groups, as the Prefect flow batch_scoring on a Dask cluster)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.table import Table

from flows.terminal import console, debugging, errors, prefect_defaults, signals_interrupt
from tasks.runtime.files import PREDICT_BATCH_SIZE


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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """predict, batch-score."""
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
