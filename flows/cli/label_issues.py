"""`label-issues`: the train split's label-issue queue by the real model cross-fitted (tasks/crossfit.py), for when
prepare's seconds-cheap TF-IDF queue (artifacts/prepare/label_issues.csv) is not good enough to review from."""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

from flows.terminal import console
from tasks.core.errors import TunegateError

TOP_ROWS = 10  # queue rows printed; the CSV holds them all
TEXT_WIDTH = 44  # characters of a text in the printed table (80 columns in all)


class LabelIssuesError(TunegateError):
    """The train split cannot be cross-fitted (too few rows, or a class too small for the folds)."""


def default_out(root: Path, detector: str) -> Path:
    return root / "artifacts" / "label_issues" / f"{detector}.csv"


def queue_lines(queue, rows: int, seconds: float, detector: str, out: Path) -> list[str]:
    """The summary and the top of the queue, each line at most 80 columns."""
    share = len(queue) / rows if rows else 0.0
    lines = [f"label issues ({detector}): {len(queue)} of {rows} train rows flagged ({share:.1%}), {seconds:.0f} s",
             f"queue: {out}", "",
             f"{'rank':>4} {'given':<9} {'suggested':<9} {'score':>6}  text"]
    for row in queue.head(TOP_ROWS).itertuples():
        text = textwrap.shorten(" ".join(str(row.text).split()), TEXT_WIDTH, placeholder="...")
        lines.append(f"{row.rank:>4} {str(row.given_label)[:9]:<9} {str(row.suggested_label)[:9]:<9} "
                     f"{row.score:>6.3f}  {text}")
    return lines


def cmd_label_issues(args: argparse.Namespace) -> int:
    import pandas as pd

    from tasks.contracts.label_issues import QUEUE_COLUMNS, find_label_issues, issue_table, skip_reason
    from tasks.core.config import load_config
    from tasks.core.io import atomic_file
    from tasks.crossfit import FOLDS, detector_probabilities, read_prepared_split

    root = Path(args.project).resolve()
    cfg = load_config(root / "params.yaml")
    train, dev = read_prepared_split(root, "train"), read_prepared_split(root, "dev")
    labels = train["label"].to_numpy()
    reason = skip_reason(labels, len(cfg.data.labels), max(FOLDS, cfg.prepare.label_issues.folds))
    if reason:
        raise LabelIssuesError(f"cannot cross-fit the train split: {reason}")
    out = Path(args.out).resolve() if args.out else default_out(root, args.detector)
    console.print(f"label-issues: {FOLDS} fine-tunings of train.base_model, on about {len(train) // FOLDS} of "
                  f"{len(train)} train rows each")
    started = time.perf_counter()
    probabilities = detector_probabilities(args.detector, train[["text", "label"]], dev, cfg, root)
    issues = find_label_issues(probabilities, labels)
    queue = pd.DataFrame(issue_table(train["text"].tolist(), labels, issues, cfg.data.label_names),
                         columns=list(QUEUE_COLUMNS))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:  # a stopped run leaves the last queue, never half a new one
        queue.to_csv(tmp, index=False)
    shown = out.relative_to(root) if out.is_relative_to(root) else out
    for line in queue_lines(queue, len(train), time.perf_counter() - started, args.detector, shown):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """label-issues."""
    from tasks.crossfit import DETECTORS, ENSEMBLE, FOLDS

    parser = sub.add_parser(
        "label-issues", help="rank the train split's suspect labels by the real model cross-fitted (slow: about "
                             "one training run)",
        description=f"Fine-tune train.base_model (train.* recipe) on {FOLDS} folds of the prepared train split, "
                    "score each fold with the model that did not see it, flag rows by confident learning and write "
                    "the ranked queue (text, given_label, suggested_label, score, rank) as CSV. prepare writes a "
                    "queue by TF-IDF in seconds (artifacts/prepare/label_issues.csv); this one finds more of the "
                    "wrong labels (docs: Benchmarks, label issues) for about the cost of one training run. Reads "
                    "artifacts/prepare/ (train and dev); the test split is never read.")
    parser.add_argument("--detector", choices=DETECTORS, default=ENSEMBLE,
                        help=f"the fine-tuned model alone, or averaged with TF-IDF (default: {ENSEMBLE})")
    parser.add_argument("--out", help="the queue's CSV (default: artifacts/label_issues/<detector>.csv)")
    parser.add_argument("--project", default=".", help="project root (default: current folder)")
    parser.set_defaults(func=cmd_label_issues)
