"""Long reviews (issue 16): the shipped model's accuracy on whole IMDB reviews the run never saw (in none of the
prepare splits), scored through `tunegate predict --input`'s code path, beside its accuracy on the Rotten Tomatoes
rows of the test split through the same path, and texts/s of both (model loading excluded: what a long-running
predict pays per text); and the teacher's exported FP32 folder (artifacts/export/onnx) on the same reviews through the
same path, reading them by the shipped folder's long_text rule (a view of its folder), so the compression's cost on
long reviews is the paired gap teacher - shipped.

    python benchmarks/long_reviews.py          # 1000 unseen IMDB reviews, artifacts/gate/release (make bench-long)
    python benchmarks/long_reviews.py --rows 200 --model artifacts/quantize/onnx --seed 7 --work /tmp/long

Needs a finished pipeline run (artifacts/prepare, artifacts/export and the served folder). Prints a table and the
target, then one JSON line:
  {"imdb_unseen_accuracy": ..., "imdb_interval": [low, high], "rt_test_accuracy": ..., "rt_interval": [...],
   "imdb_texts_per_s": ..., "rt_texts_per_s": ..., "imdb_teacher_accuracy": ..., "imdb_teacher_interval": [...],
   "imdb_teacher_texts_per_s": ..., "long_review_accuracy_gap": ..., "long_review_accuracy_gap_interval": [...],
   "long_text": "window(stride 31, mean_prob)", "rows": {...}, "targets": {...}, "all_targets_pass": ..., ...}
Target: long_review_accuracy_gap (teacher - shipped accuracy on the unseen reviews) <= 0.01: the shipped model within
1 point of the teacher's on long reviews, decided on the gap's interval (benchmarks/_targets.py): PASS when all of it
is within 1 point, FAIL when none of it is, else INCONCLUSIVE.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._folders import folder_reading_by  # noqa: E402
from benchmarks._targets import publish, target_lines, with_targets  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.io import read_json  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.distill import TRANSFER_ROWS_FILE  # noqa: E402
from tasks.judging.compare import row_keys  # noqa: E402
from tasks.judging.slices import token_lengths  # noqa: E402
from tasks.judging.stats import accuracy_interval, paired_difference  # noqa: E402
from tasks.runtime.files import PREDICT_BATCH_SIZE, SERVING_FILE  # noqa: E402
from tasks.runtime.long_text import describe, normalise  # noqa: E402
from tasks.runtime.onnx_model import OnnxClassifier  # noqa: E402
from tasks.runtime.predict import load_served_model  # noqa: E402
from tasks.runtime.stream import predict_file  # noqa: E402

SPLITS = ("train", "dev", "test")
TEXT, LABEL = "text", "label"  # the columns of the CSVs this writes (and of prepare's splits)
# (key, comparison, bound, note); a missing value fails.
TARGETS = (("long_review_accuracy_gap", "<=", 0.01, "teacher - shipped, same reviews, same reading rule"),)


def seen_keys(paths: ArtifactPaths) -> set[str]:
    """Normalised-text keys (the gate's row_keys) of every row in prepare's train, dev and test splits, and of the
    source rows distill read as unlabelled transfer texts: none of them is evaluated on."""
    split_keys = {key for split in SPLITS for key in row_keys(list(pd.read_parquet(paths.split(split))[TEXT]))}
    transfer = paths.stage_dir("distill") / TRANSFER_ROWS_FILE
    return split_keys | (set(read_json(transfer)["rows"]) if transfer.is_file() else set())


def unseen_rows(data: pd.DataFrame, cfg: PipelineConfig, source: str, seen: set[str]) -> pd.DataFrame:
    """Rows of `source` (data.source_column) whose normalised text is in no split, each text once, as (text, label
    name): reviews the run neither trained on nor chose anything on."""
    column = cfg.data.source_column
    if column is None or column not in data.columns:
        raise SystemExit(f"the data has no source column (data.source_column: {column!r}): cannot find {source} rows")
    rows = data[(data[column].astype(str) == source) & data[cfg.data.text_column].map(lambda t: isinstance(t, str))]
    names = dict(zip(cfg.data.labels, cfg.data.label_names))
    rows = rows[rows[cfg.data.label_column].isin(list(names))]
    frame = pd.DataFrame({TEXT: rows[cfg.data.text_column].to_list(),
                          LABEL: [str(names[v]) for v in rows[cfg.data.label_column]]})
    keys = pd.Series(row_keys(frame[TEXT].to_list()))
    keep = ~keys.isin(seen) & ~keys.duplicated()
    return frame[keep.to_numpy()].reset_index(drop=True)


def seeded_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """`rows` rows drawn without replacement (all of them when there are fewer), in a seeded order."""
    picks = np.random.default_rng(seed).permutation(len(frame))[:rows]
    return frame.iloc[picks].reset_index(drop=True)


def test_rows_of(paths: ArtifactPaths, cfg: PipelineConfig, source: str) -> pd.DataFrame:
    """The test split's rows of `source` (every row when the split has no source column), as (text, label name)."""
    test = pd.read_parquet(paths.split("test"))
    column = cfg.data.source_column
    if column is not None and column in test.columns:
        test = test[test[column].astype(str) == source]
    return pd.DataFrame({TEXT: test[TEXT].to_list(), LABEL: [cfg.data.label_names[i] for i in test[LABEL]]})


def score_through_predict(model: OnnxClassifier, frame: pd.DataFrame, work: Path, name: str,
                          batch_size: int) -> tuple[np.ndarray, float]:
    """Write `frame` as work/NAME.csv, classify it as `tunegate predict --input` does (stream.predict_file), and
    return the predicted label names read back from its output, with the seconds predict_file took."""
    source, target = work / f"{name}.csv", work / f"{name}.predictions.csv"
    frame.to_csv(source, index=False)
    start = time.perf_counter()
    written = predict_file(model, source, target, TEXT, batch_size)
    seconds = time.perf_counter() - start
    predicted = pd.read_csv(target, dtype={"predicted_label": str})["predicted_label"].to_numpy()
    if written != len(frame) or len(predicted) != len(frame):
        raise SystemExit(f"{name}: predict wrote {written} rows for {len(frame)} texts")
    return predicted, seconds


def figures(frame: pd.DataFrame, predicted: np.ndarray, seconds: float, cfg: PipelineConfig,
            seed: int) -> dict[str, float | list[float] | int]:
    """Accuracy with its bootstrap interval (gate.confidence, gate.bootstrap_samples) and texts/s."""
    correct = predicted.astype(str) == frame[LABEL].astype(str).to_numpy()
    span = accuracy_interval(correct, cfg.gate.bootstrap_samples, cfg.gate.confidence, seed)
    return {"accuracy": round(span["value"], 4), "interval": [round(span["low"], 4), round(span["high"], 4)],
            "texts_per_s": round(len(frame) / seconds, 1), "rows": len(frame)}


def length_figures(folder: Path, texts: list[str]) -> dict[str, float | int]:
    """Whole-text tokens of the long texts (special tokens included) against the model's window."""
    window = json.loads((folder / SERVING_FILE).read_text())["max_length"]
    lengths = token_lengths(folder / "tokenizer.json", texts)
    return {"window_tokens": window, "median_tokens": float(np.median(lengths)),
            "longer_than_window": round(float((lengths > window).mean()), 4)}


def paired_gap(truth: pd.Series, teacher: np.ndarray, shipped: np.ndarray, cfg: PipelineConfig,
               seed: int) -> dict[str, float]:
    """Teacher - shipped accuracy on the same rows, with its paired bootstrap interval: {value, low, high}."""
    names = sorted({*truth.astype(str), *teacher.astype(str), *shipped.astype(str)})
    index = {name: i for i, name in enumerate(names)}
    as_ids = [np.asarray([index[str(v)] for v in values]) for values in (truth, teacher, shipped)]
    gap = paired_difference(*as_ids, len(names), cfg.gate.bootstrap_samples, cfg.gate.confidence, seed)["accuracy"]
    return {k: round(float(gap[k]), 4) for k in ("value", "low", "high")}


def print_table(result: dict) -> None:
    print(f"model {result['model']} reading long texts by {result['long_text']}; "
          f"{result['confidence']:.0%} bootstrap intervals; {result['batch_size']} texts a model call")
    lines = [(f"{result['sources']['long']} unseen (median {result['imdb_median_tokens']:.0f} tokens)", "imdb",
              result["imdb_unseen_accuracy"], result["rows"]["imdb"]),
             (f"{result['sources']['short']} test split", "rt", result["rt_test_accuracy"], result["rows"]["rt"]),
             (f"{result['sources']['long']} unseen, teacher FP32", "imdb_teacher", result["imdb_teacher_accuracy"],
              result["rows"]["imdb"])]
    print(f"{'texts':<36}{'rows':>7}{'accuracy':>10}{'interval':>20}{'texts/s':>10}")
    for label, key, accuracy, rows in lines:
        low, high = result[f"{key}_interval"]
        print(f"{label:<36}{rows:>7}{accuracy:>10.4f}{f'[{low:.4f}, {high:.4f}]':>20}"
              f"{result[f'{key}_texts_per_s']:>10.1f}")
    low, high = result["long_review_accuracy_gap_interval"]
    print(f"teacher {result['teacher_model']} read by the same rule: teacher - shipped on the same "
          f"{result['rows']['imdb']} reviews {result['long_review_accuracy_gap'] * 100:+.2f} points "
          f"[{low * 100:+.2f}, {high * 100:+.2f}] (paired bootstrap)")
    print(f"Targets ({'all pass' if result['all_targets_pass'] else 'not all pass'}; a missing value fails):")
    print("\n".join(target_lines(result["targets"])))


def measure(args: argparse.Namespace, work: Path) -> dict:
    paths = ArtifactPaths(Path(args.project).resolve())
    cfg = load_config(Path(args.params) if args.params else paths.root / "params.yaml")
    seed = cfg.seed if args.seed is None else args.seed
    folder = Path(args.model) if args.model else paths.stage_dir("gate") / "release"
    pool = unseen_rows(load_dataset(paths.root, cfg.data), cfg, args.source, seen_keys(paths))
    if pool.empty:
        raise SystemExit(f"no {args.source} rows of {cfg.data.path} are outside the prepare splits")
    long_rows = seeded_sample(pool, args.rows, seed)
    short_rows = test_rows_of(paths, cfg, args.short_source)
    model = load_served_model(folder)
    long_pred, long_s = score_through_predict(model, long_rows, work, args.source, args.batch_size)
    short_pred, short_s = score_through_predict(model, short_rows, work, f"{args.short_source}_test", args.batch_size)
    # The teacher's exported FP32 folder reading the reviews by the shipped folder's rule (a view; neither touched).
    teacher_folder = Path(args.teacher) if args.teacher else paths.onnx_dir
    if not (teacher_folder / SERVING_FILE).is_file():
        raise SystemExit(f"{teacher_folder} is not the teacher's exported folder (no {SERVING_FILE}): run the pipeline "
                         "(its export stage) first, or pass --teacher DIR")
    with tempfile.TemporaryDirectory(prefix="tunegate-teacher-view-") as scratch:
        teacher = load_served_model(folder_reading_by(teacher_folder, model.long_text, Path(scratch) / "teacher"))
        teacher_pred, teacher_s = score_through_predict(teacher, long_rows, work, f"{args.source}_teacher",
                                                        args.batch_size)
    long_fig = figures(long_rows, long_pred, long_s, cfg, seed)
    short_fig = figures(short_rows, short_pred, short_s, cfg, seed)
    teacher_fig = figures(long_rows, teacher_pred, teacher_s, cfg, seed)
    gap = paired_gap(long_rows[LABEL], teacher_pred, long_pred, cfg, seed)
    lengths = length_figures(folder, long_rows[TEXT].to_list())
    return {"imdb_unseen_accuracy": long_fig["accuracy"], "imdb_interval": long_fig["interval"],
            "rt_test_accuracy": short_fig["accuracy"], "rt_interval": short_fig["interval"],
            "imdb_texts_per_s": long_fig["texts_per_s"], "rt_texts_per_s": short_fig["texts_per_s"],
            "imdb_teacher_accuracy": teacher_fig["accuracy"], "imdb_teacher_interval": teacher_fig["interval"],
            "imdb_teacher_texts_per_s": teacher_fig["texts_per_s"], "long_review_accuracy_gap": gap["value"],
            "long_review_accuracy_gap_interval": [gap["low"], gap["high"]], "teacher_model": str(teacher_folder),
            "long_text": describe(normalise(model.long_text)),
            "rows": {"imdb": long_fig["rows"], "rt": short_fig["rows"], "imdb_unseen_pool": len(pool)},
            "imdb_median_tokens": lengths["median_tokens"], "imdb_longer_than_window": lengths["longer_than_window"],
            "window_tokens": lengths["window_tokens"], "sources": {"long": args.source, "short": args.short_source},
            "model": str(folder), "seed": seed, "batch_size": args.batch_size, "confidence": cfg.gate.confidence}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--params", help="params.yaml to read (default: PROJECT/params.yaml)")
    parser.add_argument("--rows", type=int, default=1000, help="unseen long reviews scored (default %(default)s)")
    parser.add_argument("--model", help="served folder (default: the project's artifacts/gate/release)")
    parser.add_argument("--teacher", help="the teacher's exported FP32 folder, read by --model's long_text rule "
                        "(default: the project's artifacts/export/onnx)")
    parser.add_argument("--seed", type=int, help="seed of the sample and the intervals (default: params.yaml seed)")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="texts per model call, as predict's")
    parser.add_argument("--source", default="imdb", help="the data's source of long reviews (data.source_column)")
    parser.add_argument("--short-source", default="rotten_tomatoes", help="the test split's source of short texts")
    parser.add_argument("--work", help="keep the input and prediction CSVs in this folder (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/long_reviews.json", help="where to keep the JSON")
    args = parser.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tunegate-long-reviews-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = with_targets(measure(args, work), TARGETS)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return publish(result, print_table, Path(args.out))


if __name__ == "__main__":
    main()
