"""Shadow replay on a shifted stream: prod's prediction log of unseen IMDB reviews and Rotten Tomatoes test rows,
replayed with a candidate (`tunegate shadow`'s code), and the label-free estimates set against the labels.

Prod (the gate's release) scores the stream one text per call and its answers are written by the service's
prediction log writer (tasks/serving/predlog.py, texts kept); the log is then replayed with the candidate (the
teacher's exported FP32 folder by default) exactly as `tunegate shadow` replays it. The rows carry labels, so the
accuracy each model really has on them, and the realized paired difference, are measured beside the estimates.

    python benchmarks/shadow_replay.py                    # 300 unseen IMDB + 300 RT test rows (make bench-shadow)
    python benchmarks/shadow_replay.py --shifted-rows 100 --in-domain-rows 100 --candidate artifacts/quantize/onnx

Needs a finished pipeline run (artifacts/prepare, the gate's release, artifacts/export/onnx). Prints a table, then
one JSON line:
  {"rows": {...}, "prod_version": ..., "disagreement": {...}, "slices": [...], "estimated_accuracy": {...},
   "realized_accuracy": {...}, "estimated_difference": {...}, "realized_difference": {...}, "by_source": {...},
   "latency_ms_b1": {...}, "cpu": ..., ...}
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._targets import publish  # noqa: E402
from benchmarks.long_reviews import LABEL, TEXT, seeded_sample, seen_keys, test_rows_of, unseen_rows  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.host import cpu_facts  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.judging.stats import accuracy_interval, paired_difference  # noqa: E402
from tasks.monitoring.reference import scoring_threads  # noqa: E402
from tasks.judging.shadow import Replayed, disagreement, replay, replay_report  # noqa: E402
from tasks.runtime.onnx_model import OnnxClassifier  # noqa: E402
from tasks.runtime.prediction_log import read_prediction_log  # noqa: E402
from tasks.serving.predlog import PredictionLog  # noqa: E402
from tasks.serving.scoring import load_served  # noqa: E402

SOURCE = "source"  # the stream's column naming where a row came from


def stream_rows(paths: ArtifactPaths, cfg: PipelineConfig, args: argparse.Namespace, seed: int) -> pd.DataFrame:
    """Unseen reviews of the shifted source and test rows of the in-domain source, each text once, in a seeded
    order: (text, label name, source)."""
    pool = unseen_rows(load_dataset(paths.root, cfg.data), cfg, args.source, seen_keys(paths))
    if pool.empty:
        raise SystemExit(f"no {args.source} rows of {cfg.data.path} are outside the prepare splits")
    shifted = seeded_sample(pool, args.shifted_rows, seed).assign(**{SOURCE: args.source})
    in_domain = seeded_sample(test_rows_of(paths, cfg, args.short_source), args.in_domain_rows, seed)
    stream = pd.concat([shifted, in_domain.assign(**{SOURCE: args.short_source})], ignore_index=True)
    stream = stream.drop_duplicates(TEXT, keep=False)  # a text logged twice could not be told apart by its label
    return seeded_sample(stream, len(stream), seed)


def write_prod_log(prod: Path, texts: list[str], log_dir: Path, cfg: PipelineConfig, threads: int) -> str:
    """Score `texts` with prod one text per call (as the service at max_batch_size 1) and log every answer with
    its text through the service's prediction log writer; returns prod's version."""
    served = load_served(prod, cfg.serve.model_name, None, threads)
    log = PredictionLog(log_dir, log_texts=True, file_mb=cfg.serve.log_file_mb, max_mb=cfg.serve.log_max_mb,
                        flush_seconds=cfg.serve.log_flush_seconds)
    log.start()
    try:
        for text in texts:
            log.append(served.info.version, [text], served.score([text], 1), served.info.labels)
    finally:
        log.close()
        served.close()
    if log.dropped:
        raise SystemExit(f"the prediction log dropped {log.dropped} records: the replay would miss them")
    return served.info.version


def realized(truth: np.ndarray, predicted: np.ndarray, cfg: PipelineConfig, seed: int) -> dict[str, float]:
    """Accuracy against the labels, with the gate's bootstrap interval."""
    return accuracy_interval(truth == predicted, cfg.gate.bootstrap_samples, cfg.gate.confidence, seed)


def realized_difference(truth: np.ndarray, prod: np.ndarray, candidate: np.ndarray, labels: list[str],
                        cfg: PipelineConfig, seed: int) -> dict[str, float]:
    """Candidate - prod accuracy on the same rows with the gate's paired bootstrap interval."""
    index = {name: i for i, name in enumerate(labels)}
    ids = [np.asarray([index[v] for v in values]) for values in (truth, candidate, prod)]
    gap = paired_difference(*ids, len(labels), cfg.gate.bootstrap_samples, cfg.gate.confidence, seed)["accuracy"]
    return {key: float(gap[key]) for key in ("value", "low", "high")}


def by_source(replayed: Replayed, sources: np.ndarray, truth: np.ndarray, prod: np.ndarray, candidate: np.ndarray,
              cfg: PipelineConfig, seed: int) -> dict[str, dict]:
    """Per source: rows, disagreement, estimated (mean top probability) and realized accuracy of both."""
    figures = {}
    for name in dict.fromkeys(sources):
        rows = sources == name
        figures[str(name)] = {
            "rows": int(rows.sum()), "disagreement": disagreement(prod[rows] != candidate[rows], cfg.gate.confidence),
            "prod_estimated": float(replayed.prod_probs[rows].max(axis=1).mean()),
            "candidate_estimated": float(replayed.candidate_probs[rows].max(axis=1).mean()),
            "prod_realized": realized(truth[rows], prod[rows], cfg, seed),
            "candidate_realized": realized(truth[rows], candidate[rows], cfg, seed)}
    return figures


def measure(args: argparse.Namespace, log_dir: Path) -> dict:
    paths = ArtifactPaths(Path(args.project).resolve())
    cfg = load_config(Path(args.params) if args.params else paths.params)
    seed = cfg.seed if args.seed is None else args.seed
    threads = args.threads or scoring_threads(cfg)
    prod = Path(args.prod) if args.prod else paths.stage_dir("gate") / "release"
    candidate = Path(args.candidate) if args.candidate else paths.onnx_dir
    stream = stream_rows(paths, cfg, args, seed)
    prod_version = write_prod_log(prod, stream[TEXT].to_list(), log_dir, cfg, threads)

    classifier = OnnxClassifier(candidate, threads=threads)
    replayed = replay(read_prediction_log(log_dir), classifier, prod_version)
    report = replay_report(replayed, classifier, length_edges=cfg.gate.length_buckets, confidence=cfg.gate.confidence,
                           latency_rows=args.latency_rows)
    row_of = stream.set_index(TEXT)
    truth = row_of.loc[replayed.texts, LABEL].to_numpy(dtype=object)
    sources = row_of.loc[replayed.texts, SOURCE].to_numpy(dtype=object)
    labels = classifier.labels
    prod_labels = np.asarray([r["label"] for r in replayed.records], dtype=object)
    candidate_labels = np.asarray(labels, dtype=object)[replayed.candidate_probs.argmax(axis=1)]
    return {**report, "prod": str(prod), "candidate": str(candidate),
            "realized_accuracy": {"prod": realized(truth, prod_labels, cfg, seed),
                                  "candidate": realized(truth, candidate_labels, cfg, seed)},
            "realized_difference": realized_difference(truth, prod_labels, candidate_labels, labels, cfg, seed),
            "by_source": by_source(replayed, sources, truth, prod_labels, candidate_labels, cfg, seed),
            "sources": {"shifted": args.source, "in_domain": args.short_source}, "seed": seed, "threads": threads,
            "cpu": cpu_facts()["model"], "cpu_kind": cpu_facts()["kind"]}


def _span(figure: dict) -> str:
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def _signed(figure: dict) -> str:
    return f"{figure['value']:+.3f} [{figure['low']:+.3f}, {figure['high']:+.3f}]"


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(f"prod {result['prod']} ({result['prod_version']}) logged {rows['replayed']} texts; replayed with "
          f"{result['candidate']}; {result['confidence']:.0%} intervals; {result['threads']} threads, {result['cpu']}")
    print(f"{'texts':<18}{'rows':>6}{'disagree':>10}{'prod est':>10}{'prod real':>11}{'cand est':>10}"
          f"{'cand real':>11}")
    overall = {"rows": rows["replayed"], "disagreement": result["disagreement"],
               "prod_estimated": result["estimated_accuracy"]["prod"]["value"],
               "candidate_estimated": result["estimated_accuracy"]["candidate"]["value"],
               "prod_realized": result["realized_accuracy"]["prod"],
               "candidate_realized": result["realized_accuracy"]["candidate"]}
    for name, figures in [("all", overall), *result["by_source"].items()]:
        print(f"{name:<18}{figures['rows']:>6}{figures['disagreement']['value']:>10.3f}"
              f"{figures['prod_estimated']:>10.3f}{figures['prod_realized']['value']:>11.3f}"
              f"{figures['candidate_estimated']:>10.3f}{figures['candidate_realized']['value']:>11.3f}")
    print("disagreement by slice:")
    for item in result["slices"]:
        print(f"  {item['column'] + ' ' + str(item['value']):<24}{item['rows']:>6}  {_span(item['disagreement'])}")
    estimated = result["estimated_accuracy"]
    print(f"estimated accuracy: prod {_span(estimated['prod'])}, candidate {_span(estimated['candidate'])}")
    realized_ = result["realized_accuracy"]
    print(f"realized accuracy:  prod {_span(realized_['prod'])}, candidate {_span(realized_['candidate'])}")
    print(f"candidate - prod: estimated {_signed(result['estimated_difference'])} (paired, label-free); realized "
          f"{_signed(result['realized_difference'])} (paired bootstrap)")
    latency = result["latency_ms_b1"]
    print(f"candidate latency, one text per call: p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms "
          f"({latency['rows']} texts)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--params", help="params.yaml to read (default: PROJECT/params.yaml)")
    parser.add_argument("--prod", help="prod's served folder (default: the project's artifacts/gate/release)")
    parser.add_argument("--candidate", help="the candidate's served folder (default: the project's "
                                            "artifacts/export/onnx, the teacher FP32)")
    parser.add_argument("--shifted-rows", type=int, default=300,
                        help="unseen reviews of --source (default %(default)s)")
    parser.add_argument("--in-domain-rows", type=int, default=300,
                        help="test split rows of --short-source (default %(default)s; fewer when the split has fewer)")
    parser.add_argument("--source", default="imdb", help="the data's source of the shifted stream (data.source_column)")
    parser.add_argument("--short-source", default="rotten_tomatoes", help="the test split's in-domain source")
    parser.add_argument("--latency-rows", type=int, default=None, help="texts timed at batch 1 (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: serve.threads, "
                                                                  "unset meaning the cores)")
    parser.add_argument("--seed", type=int, help="seed of the samples and the intervals (default: params.yaml seed)")
    parser.add_argument("--log", help="keep the prediction log in this (new or empty) folder (default: a temporary "
                                      "one)")
    parser.add_argument("--out", default="benchmarks/results/shadow_replay.json", help="where to keep the JSON")
    args = parser.parse_args(argv)

    log_dir = Path(args.log) if args.log else Path(tempfile.mkdtemp(prefix="tunegate-shadow-log-"))
    if log_dir.is_dir() and any(log_dir.iterdir()):
        raise SystemExit(f"{log_dir} is not empty: the replay would read records of another stream")
    try:
        result = measure(args, log_dir)
    finally:
        if not args.log:
            shutil.rmtree(log_dir, ignore_errors=True)
    return publish(result, print_table, Path(args.out))


if __name__ == "__main__":
    main()
