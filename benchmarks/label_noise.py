"""Label issues: how well prepare's queue (tasks/contracts/label_issues.py) finds labels flipped on purpose.

On the default run's train split (artifacts/prepare/train.parquet), for each rate (2%, 5%, 10%) a seeded draw of
that share of the rows gets another class's label; the detector runs on the flipped split with prepare's settings
(prepare.label_issues.folds, seed), and the queue's top k rows (k = rows flipped) are scored against the flipped
rows: precision = flipped rows in the top k / k, recall = flipped rows found in the top k / rows flipped. The
split's own wrong labels count against precision, so the figures are a floor. A random queue's precision is the
rate itself; the target asks for several times that.

--features picks the detectors measured side by side on the same flips and folds: tfidf (word 1-2 gram TF-IDF),
embeddings (train.base_model's sentence embeddings) or both. The embeddings do not depend on the labels, so they
are computed once per run (embedding_seconds) and each rate's seconds are the cross-fitting and flagging alone.
Each detector says whether it passes the target; the summary's own target (and its "rates") is the detector
prepare is configured with (prepare.label_issues.features), or the first one measured, unless --judge names one.

Two more detectors, those of `tunegate label-issues` (tasks/crossfit.py; prepare does not run them): `finetuned`
scores each row with the real model fine-tuned (train.* recipe, the train stage's fit path) on the other half of
the flipped split (2 folds: two fine-tunings on half the rows per rate, about one training run), and
`finetuned+tfidf` averages its probabilities with TF-IDF's. They answer what the cheap detector gives up against
the real model, at what cost: `--features tfidf finetuned finetuned+tfidf`.

With --train (expensive: two fine-tunings per rate), the real model is fine-tuned with the train stage's fit path
(tasks.train.fit, train.* params) on the flipped split and on it with the judged detector's top k dropped, each
scored on the test split (heads of train.max_length tokens) with a bootstrap interval.

Prints a table, then one JSON line: {"rates": [{"rate", "flipped", "precision_at_k", "recall_at_k", ...}],
"detectors": {"tfidf": {"rates", "min_precision_lift", "targets", "passes"}, ...}, ...}

    python benchmarks/label_noise.py [--rates 0.02 0.05 0.1] [--features both] [--project .] [--train]
                                     [--features tfidf finetuned finetuned+tfidf] [--judge finetuned+tfidf]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._targets import judge, target_lines, with_targets  # noqa: E402
from tasks.contracts.label_issues import (FEATURES, find_label_issues, out_of_sample_probabilities,  # noqa: E402
                                          sentence_embeddings)
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.crossfit import (DETECTORS, FINETUNED, FOLDS, MissingSplitError, detector_probabilities,  # noqa: E402
                            fine_tuned_model, head_logits, read_prepared_split)

REPO = Path(__file__).resolve().parents[1]
RATES = (0.02, 0.05, 0.10)
# A random queue's precision is the flip rate; the queue must beat it several times over at every rate.
MIN_LIFT = 5.0
TARGETS = (("min_precision_lift", ">=", MIN_LIFT, "precision at k / flip rate, worst rate"),)
BOOTSTRAP_SAMPLES, CONFIDENCE = 2000, 0.95


def flip_labels(labels: np.ndarray, n_classes: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of `labels` with round(rate x rows) rows (a seeded draw) moved to another class (uniformly among the
    others); the flipped rows, sorted."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False))
    noisy = np.asarray(labels, dtype=np.int64).copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return noisy, flipped


def top_k_scores(queue: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Precision and recall of the queue's first k rows (k = rows flipped) against the flipped rows. The two are
    equal unless the queue holds fewer than k rows (precision is then over the rows it holds)."""
    k = len(flipped)
    top = queue[:k]
    found = int(np.isin(top, flipped).sum())
    return {"k": k, "found": found, "precision_at_k": round(found / len(top), 4) if len(top) else 0.0,
            "recall_at_k": round(found / k, 4) if k else 0.0}


def read_split(project: Path, split: str) -> pd.DataFrame:
    """A split of the default run's prepare stage, or a clear stop (no traceback) when prepare has not run."""
    try:
        return read_prepared_split(project, split)
    except MissingSplitError as exc:
        raise SystemExit(str(exc)) from None


def measure_rate(train: pd.DataFrame, cfg: PipelineConfig, rate: float, name: str, project: Path,
                 embeddings: np.ndarray | None, fine_tuned: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """One rate, one detector: flip, score every row out of sample, flag, score the top k. Returns the figures, the
    flipped labels and the queue. `fine_tuned` caches the cross-fitted model's probabilities per rate (both of
    tasks.crossfit's detectors read them; the seconds of each include the fine-tunings)."""
    n_classes = len(cfg.data.labels)
    noisy, flipped = flip_labels(train["label"].to_numpy(), n_classes, rate, cfg.seed)
    started = time.perf_counter()
    if name in DETECTORS:
        rows = train.assign(label=noisy)
        if rate in fine_tuned:  # fine-tuned for the other detector: its seconds count here too
            reused, fitting_seconds = fine_tuned[rate]
            started -= fitting_seconds
        else:
            reused = detector_probabilities(FINETUNED, rows, read_split(project, "dev"), cfg, project)
            fine_tuned[rate] = (reused, time.perf_counter() - started)
        probabilities = detector_probabilities(name, rows, None, cfg, project, reused)
    else:
        probabilities = out_of_sample_probabilities(train["text"].tolist(), noisy, n_classes,
                                                    cfg.prepare.label_issues.folds, cfg.seed,
                                                    embeddings if name == "embeddings" else None)
    issues = find_label_issues(probabilities, noisy)
    seconds = time.perf_counter() - started
    figures = {"rate": rate, "flipped": len(flipped), "flagged": len(issues.rows),
               "estimated_share": round(issues.noisy_share, 4), **top_k_scores(issues.rows, flipped),
               "seconds": round(seconds, 2)}
    return figures, noisy, issues.rows


def fine_tuned_accuracy(train: pd.DataFrame, dev: pd.DataFrame, test: pd.DataFrame, cfg: PipelineConfig,
                        project: Path, work: Path) -> dict[str, float]:
    """Test accuracy, with its bootstrap interval, of the real model fine-tuned on `train` by the train stage's
    fit path (train.* params; best epoch chosen on dev)."""
    from tasks.judging.stats import accuracy_interval

    model, tokenizer = fine_tuned_model(train, dev, cfg, project, work)
    logits = head_logits(model, tokenizer, test["text"].tolist(), cfg)
    correct = logits.argmax(axis=1) == test["label"].to_numpy()
    return {k: round(v, 4) for k, v in accuracy_interval(correct, BOOTSTRAP_SAMPLES, CONFIDENCE, cfg.seed).items()}


def train_figures(train: pd.DataFrame, noisy: np.ndarray, queue: np.ndarray, k: int, cfg: PipelineConfig,
                  project: Path) -> dict[str, dict[str, float]]:
    """Test accuracy fine-tuned on the flipped split, and on it with the queue's top k dropped."""
    dev, test = read_split(project, "dev"), read_split(project, "test")
    flipped_split = train.assign(label=noisy)
    cleaned = flipped_split.drop(index=flipped_split.index[queue[:k]]).reset_index(drop=True)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="tunegate-labels-") as tmp:
        for name, rows in (("noisy", flipped_split), ("top_k_dropped", cleaned)):
            work = Path(tmp) / name
            work.mkdir()
            figures[name] = fine_tuned_accuracy(rows, dev, test, cfg, project, work)
    return figures


def table_lines(summary: dict) -> list[str]:
    """The figures as an 80-column table: one line per rate and detector, the detectors of a rate side by side."""
    detectors = summary.get("detectors") or {summary.get("features", "-"): {"rates": summary["rates"]}}
    lines = [f"label issues on {summary['train_rows']} train rows, {summary['folds']} folds, seed {summary['seed']}"]
    if summary.get("embedding_seconds") is not None:
        lines.append(f"embeddings: {summary['embedding_seconds']:.1f} s for {summary['train_rows']} rows, once "
                     "(not in the rates' seconds)")
    lines.append(f"{'rate':>5} {'flipped':>7}  {'features':<15} {'flagged':>7} {'est.share':>9} {'prec@k':>7} "
                 f"{'recall@k':>8} {'lift':>5} {'seconds':>7}")
    by_rate = [dict(zip(detectors, rows)) for rows in zip(*(d["rates"] for d in detectors.values()))]
    for rows in by_rate:
        for name, row in rows.items():
            lines.append(f"{row['rate']:>5.0%} {row['flipped']:>7}  {name:<15} {row['flagged']:>7} "
                         f"{row['estimated_share']:>9.4f} {row['precision_at_k']:>7.3f} {row['recall_at_k']:>8.3f} "
                         f"{row['precision_at_k'] / row['rate']:>5.1f} {row['seconds']:>7.2f}")
    for row in summary["rates"]:
        if "test_accuracy" in row:
            for name, acc in row["test_accuracy"].items():
                lines.append(f"{row['rate']:>5.0%} test accuracy {name:<14} {acc['value']:.4f} "
                             f"[{acc['low']:.4f}, {acc['high']:.4f}]")
    if "detectors" in summary:
        for name, detector in detectors.items():
            check = detector["targets"]["min_precision_lift"]
            lines.append(f"{name:<15} worst lift {detector['min_precision_lift']} (target {check['target']}) -> "
                         f"{'PASS' if check['pass'] else 'FAIL'}")
    return lines


def worst_lift(rows: list[dict]) -> float | None:
    """Precision at k / flip rate, the worst over the rates (None without a rate above 0)."""
    lifts = [row["precision_at_k"] / row["rate"] for row in rows if row["rate"] > 0]
    return round(min(lifts), 2) if lifts else None


def judged_detector(configured: str, names: list[str], asked: str | None) -> str:
    """The detector the summary's target judges (and --train drops the top k of): `asked` (--judge) when given (it
    must be measured), else the one prepare is configured with when measured, else the first measured."""
    if asked is not None:
        if asked not in names:
            raise SystemExit(f"--judge {asked} is not measured: add it to --features ({' '.join(names)})")
        return asked
    return configured if configured in names else names[0]


def run(project: Path, rates: list[float], train_models: bool, features: list[str] | str = "both",
        chosen_judge: str | None = None) -> dict:
    train = read_split(project, "train")
    cfg = load_config(project / "params.yaml")
    asked = [features] if isinstance(features, str) else features
    names = list(dict.fromkeys(n for name in asked for n in (FEATURES if name == "both" else [name])))
    names.sort(key=lambda name: name != "tfidf")  # today's detector first, the candidates beside it
    judged = judged_detector(cfg.prepare.label_issues.features, names, chosen_judge)
    embeddings, embedding_seconds = None, None
    if "embeddings" in names:
        from tasks.core.base_model import resolve_base_model

        base, _ = resolve_base_model(cfg.train.base_model, project)
        started = time.perf_counter()
        embeddings = sentence_embeddings(train["text"].tolist(), base)
        embedding_seconds = round(time.perf_counter() - started, 2)
    detectors, fine_tuned = {}, {}
    for name in names:
        rows = []
        for rate in rates:
            figures, noisy, queue = measure_rate(train, cfg, rate, name, project, embeddings, fine_tuned)
            if train_models and name == judged:
                figures["test_accuracy"] = train_figures(train, noisy, queue, figures["k"], cfg, project)
            rows.append(figures)
        lift = worst_lift(rows)
        checks = judge({"min_precision_lift": lift}, TARGETS)
        detectors[name] = {"rates": rows, "min_precision_lift": lift, "targets": checks,
                           "passes": all(check["pass"] for check in checks.values())}
    summary = {"measured": "precision and recall of the label-issue queue's top k (k = labels flipped at random) "
                           "on the train split, per detector" + (", and test accuracy fine-tuned on the flipped "
                                                                 "split vs with the top k dropped"
                                                                 if train_models else ""),
               "train_rows": len(train), "folds": cfg.prepare.label_issues.folds, "seed": cfg.seed,
               "features": judged, "rates": detectors[judged]["rates"],
               "min_precision_lift": detectors[judged]["min_precision_lift"], "detectors": detectors,
               "passing_detectors": [name for name, detector in detectors.items() if detector["passes"]],
               "embedding_seconds": embedding_seconds}
    return with_targets(summary, TARGETS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES), help="shares of labels flipped")
    parser.add_argument("--project", default=str(REPO),
                        help="project whose params.yaml and artifacts/prepare/ to use (default: this repo)")
    parser.add_argument("--train", action="store_true",
                        help="also fine-tune the real model per rate on the flipped split and with the top k "
                             "dropped (expensive)")
    parser.add_argument("--features", choices=[*FEATURES, "both", *DETECTORS], nargs="+", default=["both"],
                        help="detectors measured side by side on the same flips: prepare's feature sets (both = "
                             f"{' and '.join(FEATURES)}, the default), and {' and '.join(DETECTORS)}: the real model "
                             f"cross-fitted on {FOLDS} folds (expensive: about one training run per rate)")
    parser.add_argument("--judge", choices=[*FEATURES, *DETECTORS],
                        help="the detector the summary's target judges and --train drops the top k of (default: "
                             "prepare.label_issues.features)")
    args = parser.parse_args()
    summary = run(Path(args.project).resolve(), args.rates, args.train, args.features, args.judge)
    print("\n".join(table_lines(summary)))
    print("\n".join(target_lines(summary["targets"])))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
