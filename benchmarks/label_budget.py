"""Labelling budget: labels needed to settle a champion comparison with the label queue
(tasks/judging/label_queue.py) versus uniform sampling of the same pool, and how often the settled verdict is
wrong.

Pools with known labels:
- real: the shipped model (artifacts/gate/release, candidate) against the teacher FP32 (artifacts/export/onnx,
  champion) on the dev and test splits (rows neither model was trained on), both scored through predict;
- synthetic: --synthetic-rows rows, champion accuracy 0.85, 10% disagreements on which the candidate is right
  60% of the time: a true difference of +2 points.

For each seed, labels arrive in queue order (the queue built with that seed) or in a uniform random order of the
pool, and the comparison is re-judged (label_queue.rejudge, the gate's rule and confidence, --bootstrap resamples)
at a fixed schedule of label counts; the first look that is not INCONCLUSIVE settles it. Reported per pool and
design: share of seeds settled, median and p90 labels to settle, settled verdicts (PROMOTE / REJECT), and the
error rate against the truth: the verdict the fully labelled pool gives (when it is decisive), and against the
sign of the true difference relative to the margin (PROMOTE while the true difference is below -margin, or REJECT
while it is above).

Prints a table, then one JSON line.

    python benchmarks/label_budget.py [--seeds 200] [--project .] [--synthetic-only] [--synthetic-rows 5000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._targets import target_lines, with_targets  # noqa: E402
from tasks.core.config import GateConfig, load_config  # noqa: E402
from tasks.judging.compare import INCONCLUSIVE, PROMOTE, REJECT  # noqa: E402
from tasks.judging.label_queue import build_queue, pool_frame, rejudge  # noqa: E402

# The queue must settle with fewer labels than uniform sampling wherever both settle.
TARGETS = (("min_label_saving", ">=", 2.0, "uniform median labels / queue median labels, worst pool"),)
SYNTHETIC = {"champion_accuracy": 0.85, "disagreement": 0.10, "candidate_right_on_disagreement": 0.60}
FIRST_LOOK, STEP, GROWTH = 10, 10, 1.1  # looks at 10, 20, ..., 100 labels, then every 10% more


def look_schedule(rows: int) -> list[int]:
    """Label counts at which the comparison is re-judged, up to every row of the pool."""
    looks, count = [], FIRST_LOOK
    while count < rows:
        looks.append(count)
        count = count + STEP if count < 100 else int(count * GROWTH)
    return looks + [rows]


def synthetic_pool(rows: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Texts, true labels, champion and candidate labels (two classes) with a true difference of about +2 points."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, rows)
    champion = np.where(rng.random(rows) < SYNTHETIC["champion_accuracy"], truth, 1 - truth)
    disagree = rng.random(rows) < SYNTHETIC["disagreement"]
    # On a disagreement exactly one is right: the candidate with the stated chance, the champion otherwise.
    candidate_right = rng.random(rows) < SYNTHETIC["candidate_right_on_disagreement"]
    champion = np.where(disagree, np.where(candidate_right, 1 - truth, truth), champion)
    candidate = np.where(disagree, 1 - champion, champion)
    return [f"synthetic row {i}" for i in range(rows)], truth, champion, candidate


def real_pool(project: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """dev + test rows with their labels, the teacher FP32's (champion) and the shipped model's (candidate)."""
    from tasks.runtime.files import PREDICT_BATCH_SIZE
    from tasks.runtime.predict import load_served_model, predict_texts

    splits = [project / "artifacts" / "prepare" / f"{name}.parquet" for name in ("dev", "test")]
    folders = {"champion": project / "artifacts" / "export" / "onnx", "candidate": project / "artifacts" / "gate" /
               "release"}
    missing = [str(p) for p in [*splits, *folders.values()] if not p.exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: run the pipeline first (`make run`), or pass "
                         "--synthetic-only")
    frame = pd.concat([pd.read_parquet(p) for p in splits], ignore_index=True).drop_duplicates("text")
    texts = list(frame["text"])
    predicted = {}
    for role, folder in folders.items():
        model = load_served_model(folder)
        probs = predict_texts(model, texts, PREDICT_BATCH_SIZE)[[f"p_{n}" for n in model.labels]].to_numpy()
        predicted[role] = probs.argmax(axis=1)
    return texts, frame["label"].to_numpy(), predicted["champion"], predicted["candidate"]


def settle(design: pd.DataFrame, order: np.ndarray, truth: np.ndarray, cfg: GateConfig, seed: int
           ) -> tuple[str, int]:
    """The first verdict that is not INCONCLUSIVE as labels of design's rows arrive in `order`, and the labels it
    took (INCONCLUSIVE and every row when none settles)."""
    ids = design["id"].to_numpy()
    for count in look_schedule(len(order)):
        taken = order[:count]
        judged = rejudge(design, list(ids[taken]), truth[taken], 2, cfg, seed)
        if judged["outcome"] != INCONCLUSIVE:
            return judged["outcome"], count
    return INCONCLUSIVE, len(order)


def measure_pool(name: str, texts: list[str], truth: np.ndarray, champion: np.ndarray, candidate: np.ndarray,
                 cfg: GateConfig, seeds: int) -> list[dict]:
    """One row per design: labels to settle over `seeds` seeds, verdicts, and errors against the truth."""
    pool = pool_frame(texts, champion, candidate, ["0", "1"])
    truth_by_id = dict(zip(pool["id"], truth))
    full = rejudge(pool, list(pool["id"]), truth, 2, cfg, 0)
    true_difference = float((candidate == truth).mean() - (champion == truth).mean())
    results = {"queue": [], "uniform": []}
    for seed in range(seeds):
        queue = build_queue(texts, champion, candidate, ["0", "1"], seed)
        queue_truth = np.array([truth_by_id[i] for i in queue["id"]])
        results["queue"].append(settle(queue, np.arange(len(queue)), queue_truth, cfg, seed))
        order = np.random.default_rng(seed).permutation(len(pool))
        results["uniform"].append(settle(pool, order, truth, cfg, seed))
    return [design_row(name, design, runs, full["outcome"], true_difference, cfg.margin, len(texts),
                       full["disagreement"]) for design, runs in results.items()]


def design_row(pool: str, design: str, runs: list[tuple[str, int]], full: str, true_difference: float,
               margin: float, rows: int, disagreement: float) -> dict:
    """Figures of one design on one pool from its (verdict, labels) per seed."""
    settled = [(verdict, labels) for verdict, labels in runs if verdict != INCONCLUSIVE]
    labels = np.array([labels for _, labels in settled]) if settled else np.array([])
    # Against the sign: PROMOTE is wrong when the candidate is truly worse beyond the margin, REJECT when it is not.
    truly_worse = true_difference < -margin
    sign_errors = sum((v == PROMOTE and truly_worse) or (v == REJECT and not truly_worse) for v, _ in settled)
    full_errors = sum(v != full for v, _ in settled) if full != INCONCLUSIVE else None
    return {"pool": pool, "design": design, "rows": rows, "disagreement": round(disagreement, 4),
            "true_difference": round(true_difference, 4), "full_pool_verdict": full, "seeds": len(runs),
            "settled": len(settled), "promote": sum(v == PROMOTE for v, _ in settled),
            "reject": sum(v == REJECT for v, _ in settled),
            "median_labels": float(np.median(labels)) if len(labels) else None,
            "p90_labels": float(np.percentile(labels, 90)) if len(labels) else None,
            "error_rate_vs_full": round(full_errors / len(settled), 4) if settled and full_errors is not None
            else None, "error_rate_vs_sign": round(sign_errors / len(settled), 4) if settled else None}


def label_saving(rows: list[dict]) -> float | None:
    """Worst pool's uniform median labels / queue median labels (pools where both designs settle)."""
    ratios = []
    for pool in dict.fromkeys(r["pool"] for r in rows):
        by = {r["design"]: r for r in rows if r["pool"] == pool}
        if by["queue"]["median_labels"] and by["uniform"]["median_labels"]:
            ratios.append(by["uniform"]["median_labels"] / by["queue"]["median_labels"])
    return round(min(ratios), 2) if ratios else None


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def table_lines(rows: list[dict]) -> list[str]:
    """The table (80 columns): one line per pool and design."""
    lines = [f"{'pool':<10}{'design':<8}{'rows':>6}{'disagr':>7}{'true d':>8}{'full':>6}{'settled':>8}"
             f"{'P/R':>8}{'median':>7}{'p90':>6}{'err':>6}",
             ""]
    for r in rows:
        lines.append(f"{r['pool']:<10}{r['design']:<8}{r['rows']:>6}{r['disagreement']:>7.1%}"
                     f"{r['true_difference']:>+8.4f}{r['full_pool_verdict'][:4]:>6}"
                     f"{r['settled']:>4}/{r['seeds']:<3}{r['promote']:>4}/{r['reject']:<3}"
                     f"{_figure(r['median_labels'], '.0f'):>7}{_figure(r['p90_labels'], '.0f'):>6}"
                     f"{_figure(r['error_rate_vs_sign'], '.1%'):>6}")
    lines[1] = "-" * max(map(len, lines))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--project", default=".")
    parser.add_argument("--synthetic-only", action="store_true", help="skip the real pool (no finished run needed)")
    parser.add_argument("--synthetic-rows", type=int, default=5000)
    parser.add_argument("--bootstrap", type=int, default=400,
                        help="resamples of the macro-F1 interval per look (the gate's own count is slow here)")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    cfg = load_config(project / "params.yaml")
    gate = cfg.gate.model_copy(update={"bootstrap_samples": args.bootstrap})
    started = time.perf_counter()
    rows = []
    if not args.synthetic_only:
        rows += measure_pool("real", *real_pool(project), gate, args.seeds)
    rows += measure_pool("synthetic", *synthetic_pool(args.synthetic_rows, cfg.seed), gate, args.seeds)
    summary = with_targets({"rows": rows, "min_label_saving": label_saving(rows), "margin": gate.margin,
                            "confidence": gate.confidence, "bootstrap_samples": args.bootstrap, "seeds": args.seeds,
                            "seconds": round(time.perf_counter() - started, 1), "host": platform.processor() or
                            platform.machine()}, TARGETS)
    for line in table_lines(rows):
        print(line)
    print("  err: settled verdicts against the sign of the true difference vs -margin")
    for line in target_lines(summary["targets"]):
        print(line)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
