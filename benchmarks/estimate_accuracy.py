"""Accuracy estimated without labels (the monitor's estimated_accuracy_drop) against the accuracy realised, on streams
whose labels are known and whose texts the shipped model never trained on, window by window.

The shipped folder scores every text once, one text per call (as live requests are), through the service's own
code (tasks.serving.scoring.load_served). Streams:
  in_domain_test / in_domain_dev  rows of the test / dev split of the in-domain source (--in-domain-source): never
                                  trained on (dev picked the epoch and may have fitted the temperature);
  shifted                         --shifted-rows rows of --shifted-source (IMDB: whole reviews, longer than the
                                  model's window) whose text is in no split and was no distillation transfer text;
  flipped                         the in-domain rows (test + dev) with the labels of a seeded --flip-share of them
                                  moved to another class: p(label | text) changed, the texts did not.
Per stream, --windows windows of --window-texts texts (default monitor.min_window_texts), each a seeded draw
without replacement from the stream (windows of one pool overlap: coverage is that of a random window of it). Per
window: estimate = tasks.judging.estimate.expected_accuracy of the top-class probabilities, at gate.confidence;
error = estimate - realised accuracy; covered = realised within the interval; the check's value = the gate's baseline
(expected accuracy on test, else test accuracy) - estimate, and whether it exceeds
monitor.checks.estimated_accuracy_drop.max.

    python benchmarks/estimate_accuracy.py [--project .] [--model artifacts/gate/release] [--windows 200]

Prints a table and the targets, then one JSON line:
  {"streams": {name: {"texts", "windows", "estimate", "realised", "mean_error", "p95_abs_error", "coverage",
   "check_failed_share", ...}}, "in_domain_coverage": ..., "in_domain_check_failed_share": ..., "flipped_mean_error":
   ..., "targets": {...}, "all_targets_pass": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._targets import target_lines, with_targets  # noqa: E402
from benchmarks.long_reviews import seen_keys, unseen_rows  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.io import write_json  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.judging.estimate import expected_accuracy  # noqa: E402
from tasks.monitoring.judge import estimate_baseline  # noqa: E402
from tasks.monitoring.performance import read_gate_figures  # noqa: E402

CHECK = "estimated_accuracy_drop"
# (key, comparison, bound, note). The interval is nominal at gate.confidence (0.95); windows of unseen in-domain
# texts should be covered about that often, and the check should stay quiet on them.
TARGETS = (("in_domain_coverage", ">=", 0.9, "nominal 0.95: in-domain windows whose realised accuracy is covered"),
           ("in_domain_check_failed_share", "<=", 0.05, "in-domain windows the check fails on"))


# ---- pure: streams and window figures ----------------------------------------------------------------------------

def split_rows(frame: pd.DataFrame, cfg: PipelineConfig, source: str | None) -> pd.DataFrame:
    """A split's rows of `source` (all rows when None or the split has no source column) as (text, label name)."""
    column = cfg.data.source_column
    if source is not None and column and column in frame.columns:
        frame = frame[frame[column].astype(str) == source]
    names = dict(zip(cfg.data.labels, cfg.data.label_names))
    frame = frame[frame[cfg.data.label_column].isin(list(names))]
    return pd.DataFrame({"text": [str(t) for t in frame[cfg.data.text_column]],
                         "label": [str(names[v]) for v in frame[cfg.data.label_column]]})


def flip_labels(labels: np.ndarray, classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (class indices) with a seeded `share` of them moved to the next class (a concept shift: the same
    texts, other labels), and the flipped indices."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), size=int(round(share * len(labels))), replace=False))
    out = labels.copy()
    out[flipped] = (out[flipped] + 1) % classes
    return out, flipped


def window_figures(top: np.ndarray, correct: np.ndarray, picks: list[np.ndarray], level: float,
                   baseline: float, bound: float) -> list[dict[str, float]]:
    """Per window (indices into the stream): the estimate with its interval, the realised accuracy, their error,
    whether the interval covers it, and the check's value and verdict."""
    rows = []
    for picked in picks:
        estimate = expected_accuracy(top[picked], level)
        realised = float(correct[picked].mean())
        value = baseline - estimate["value"]
        rows.append({"rows": int(len(picked)), "estimate": estimate["value"], "low": estimate["low"], "high": estimate["high"],
                     "realised": realised, "error": estimate["value"] - realised,
                     "covered": bool(estimate["low"] <= realised <= estimate["high"]), "check_value": value,
                     "check_failed": bool(value > bound)})
    return rows


def stream_summary(top: np.ndarray, correct: np.ndarray, windows: list[dict[str, float]], level: float,
                   baseline: float) -> dict[str, object]:
    """A stream's figures: the whole stream's estimate and realised accuracy, and its windows' error and coverage."""
    whole = expected_accuracy(top, level)
    errors = np.array([w["error"] for w in windows])
    return {"texts": int(len(top)), "windows": len(windows), "window_texts": int(windows[0]["rows"]),
            "estimate": round(whole["value"], 4), "estimate_interval": [round(whole["low"], 4), round(whole["high"], 4)],
            "realised": round(float(correct.mean()), 4),
            "realised_drop": round(baseline - float(correct.mean()), 4),
            "mean_error": round(float(errors.mean()), 4),
            "mean_abs_error": round(float(np.abs(errors).mean()), 4),
            "p95_abs_error": round(float(np.quantile(np.abs(errors), 0.95)), 4),
            "coverage": round(float(np.mean([w["covered"] for w in windows])), 4),
            # how far a window's estimate strays from the whole stream's: the check's own noise at this window size
            "p95_window_spread": round(float(np.quantile([abs(w["estimate"] - whole["value"]) for w in windows],
                                                         0.95)), 4),
            "mean_check_value": round(float(np.mean([w["check_value"] for w in windows])), 4),
            "max_check_value": round(float(np.max([w["check_value"] for w in windows])), 4),
            "check_failed_share": round(float(np.mean([w["check_failed"] for w in windows])), 4)}


def draw_windows(size: int, count: int, window: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` windows of min(window, size) distinct indices into a stream of `size`."""
    window = min(window, size)
    return [rng.choice(size, size=window, replace=False) for _ in range(count)]


# ---- scoring -----------------------------------------------------------------------------------------------------

def score(served, texts: list[str], label_names: list[str]) -> np.ndarray:
    """[texts, classes] probabilities in label_names order, one text per call."""
    scores = served.score(texts, 1)
    order = [list(served.info.labels).index(name) for name in label_names]
    return np.array([s.probabilities for s in scores], dtype=float).reshape(len(texts), -1)[:, order]


def streams_of(args, cfg: PipelineConfig, paths: ArtifactPaths) -> dict[str, pd.DataFrame]:
    """The labelled streams (text, label name) before the flipped one."""
    found = {f"in_domain_{split}": split_rows(pd.read_parquet(paths.split(split)), cfg, args.in_domain_source)
             for split in ("test", "dev")}
    data = load_dataset(args.project, cfg.data)
    shifted = unseen_rows(data, cfg, args.shifted_source, seen_keys(paths))
    if len(shifted) > args.shifted_rows:
        shifted = shifted.sample(n=args.shifted_rows, random_state=args.seed).reset_index(drop=True)
    found["shifted"] = shifted
    empty = [name for name, frame in found.items() if frame.empty]
    if empty:
        raise SystemExit(f"no rows for stream(s) {', '.join(empty)}: in-domain source {args.in_domain_source!r}, "
                         f"shifted source {args.shifted_source!r}")
    return found


# ---- main --------------------------------------------------------------------------------------------------------

def table_lines(result: dict) -> list[str]:
    """The streams' figures, one line each (80 columns)."""
    lines = [f"{'stream':<15}{'texts':>6}{'est.':>7}{'real':>7}{'err mean':>9}{'|err| p95':>10}{'covered':>8}"
             f"{'check fails':>12}"]
    for name, s in result["streams"].items():
        lines.append(f"{name:<15}{s['texts']:>6}{s['estimate']:>7.3f}{s['realised']:>7.3f}{s['mean_error']:>+9.3f}"
                     f"{s['p95_abs_error']:>10.3f}{s['coverage']:>8.2f}{s['check_failed_share']:>12.2f}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project root (artifacts/, data)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: the project's)")
    parser.add_argument("--model", type=Path, default=Path("artifacts/gate/release"), help="the shipped folder")
    parser.add_argument("--decision", type=Path, default=None, help="the gate's decision.json (its baseline)")
    parser.add_argument("--in-domain-source", default="rotten_tomatoes")
    parser.add_argument("--shifted-source", default="imdb")
    parser.add_argument("--shifted-rows", type=int, default=2000)
    parser.add_argument("--flip-share", type=float, default=0.3, help="share of in-domain labels moved")
    parser.add_argument("--windows", type=int, default=200, help="random windows per stream")
    parser.add_argument("--window-texts", type=int, default=None, help="default: monitor.min_window_texts")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: the cores)")
    parser.add_argument("--seed", type=int, default=None, help="default: params' seed")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON (with every window) here")
    args = parser.parse_args(argv)
    args.project = args.project.resolve()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tasks.serving.scoring import cores, load_served

    cfg = load_config(args.params or args.project / "params.yaml")
    paths = ArtifactPaths(args.project)
    args.seed = cfg.seed if args.seed is None else args.seed
    window = args.window_texts or cfg.monitor.min_window_texts
    decision = args.decision or paths.decision
    figures = read_gate_figures(decision, cfg.gate)
    if figures is None:
        raise SystemExit(f"{decision} holds no gate metrics: the check's baseline is unknown (run the pipeline)")
    baseline, baseline_named = estimate_baseline(figures)
    level = float(figures["confidence"])
    bound = cfg.monitor.checks[CHECK].max
    streams = streams_of(args, cfg, paths)
    names = list(cfg.data.label_names)
    model = args.model if args.model.is_absolute() else args.project / args.model
    served = load_served(model, cfg.serve.model_name, None, threads=args.threads or cores())
    probabilities, seconds = {}, {}
    try:
        for name, frame in streams.items():
            started = time.perf_counter()
            probabilities[name] = score(served, frame["text"].to_list(), names)
            seconds[name] = round(time.perf_counter() - started, 1)
    finally:
        served.close()
    in_domain = pd.concat([streams["in_domain_test"], streams["in_domain_dev"]], ignore_index=True)
    streams["flipped"] = in_domain
    probabilities["flipped"] = np.vstack([probabilities["in_domain_test"], probabilities["in_domain_dev"]])

    rng = np.random.default_rng(args.seed)
    result_streams, all_windows = {}, {}
    for name, frame in streams.items():
        truth = frame["label"].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
        if name == "flipped":
            truth, _ = flip_labels(truth, len(names), args.flip_share, args.seed)
        probs = probabilities[name]
        top, correct = probs.max(axis=1), (probs.argmax(axis=1) == truth).astype(float)
        windows = window_figures(top, correct, draw_windows(len(top), args.windows, window, rng), level, baseline,
                                 bound)
        result_streams[name] = stream_summary(top, correct, windows, level, baseline)
        all_windows[name] = windows

    pooled = all_windows["in_domain_test"] + all_windows["in_domain_dev"]
    result = {
        "streams": result_streams,
        "in_domain_coverage": round(float(np.mean([w["covered"] for w in pooled])), 4),
        "in_domain_mean_error": round(float(np.mean([w["error"] for w in pooled])), 4),
        "in_domain_check_failed_share": round(float(np.mean([w["check_failed"] for w in pooled])), 4),
        "shifted_mean_error": result_streams["shifted"]["mean_error"],
        "shifted_coverage": result_streams["shifted"]["coverage"],
        "flipped_mean_error": result_streams["flipped"]["mean_error"],
        "flipped_coverage": result_streams["flipped"]["coverage"],
        "flip_share": args.flip_share, "window_texts": window, "windows_per_stream": args.windows,
        "interval_confidence": level, "check_bound": bound, "baseline": round(baseline, 4),
        "baseline_is": baseline_named, "model": str(model), "seed": args.seed,
        "scoring_seconds": seconds, "threads": args.threads or cores(),
    }
    with_targets(result, TARGETS)
    print(f"estimate vs realised accuracy, {args.windows} windows of {window} texts per stream; interval "
          f"{level:.0%}; check {CHECK} = baseline {baseline:.3f} - estimate, fails above {bound:g}")
    print(f"baseline: {baseline_named}")
    print("\n".join(table_lines(result)))
    print("\n".join(target_lines(result["targets"])))
    if args.out:
        write_json(args.out, {**result, "window_figures": all_windows})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
