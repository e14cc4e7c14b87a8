"""`label-queue` (the rows whose labels would settle an INCONCLUSIVE champion comparison) and `label-queue judge`
(the comparison re-judged from the labelled rows that came back)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from flows.terminal import console

POOLS = ("test", "live")


def _plain(line: str) -> None:
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def read_pool_texts(pool: str, root: Path, cfg: Any) -> list[str]:
    """The pool's texts, each once (first occurrence kept): the test split, the prediction log's logged texts, or
    the text column of a CSV/Parquet/JSONL file."""
    import pandas as pd

    from tasks.core.io import read_table
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.label_queue import LabelQueueError
    from tasks.runtime.prediction_log import logged_texts, read_prediction_log

    if pool == "test":
        texts = list(pd.read_parquet(ArtifactPaths(root).split("test"))["text"])
    elif pool == "live":
        folder = root / cfg.serve.log_dir
        records = read_prediction_log(folder)
        texts = logged_texts(records)
        if not texts:
            raise LabelQueueError(f"the prediction log {folder} holds {len(records)} records and no texts: serve "
                                  "with serve.log_texts: true to queue live texts")
    else:
        path = Path(pool) if Path(pool).is_absolute() else root / pool
        table = read_table(path)
        if cfg.data.text_column not in table:
            raise LabelQueueError(f"{path} has no column {cfg.data.text_column!r} (data.text_column)")
        texts = [t for t in table[cfg.data.text_column] if isinstance(t, str) and t.strip()]
    return list(dict.fromkeys(texts))


def predicted_classes(folder: Path, texts: list[str], labels: list[str]) -> Any:
    """The served folder's class index per text, as `tunegate predict` labels them."""
    from tasks.judging.label_queue import LabelQueueError
    from tasks.runtime.files import PREDICT_BATCH_SIZE
    from tasks.runtime.predict import load_served_model, predict_texts

    model = load_served_model(folder)
    if list(model.labels) != list(labels):
        raise LabelQueueError(f"{folder} predicts labels {model.labels}, data.label_names is {labels}")
    frame = predict_texts(model, texts, PREDICT_BATCH_SIZE)
    return frame[[f"p_{name}" for name in labels]].to_numpy().argmax(axis=1)


def champion_of(args: argparse.Namespace, root: Path, cfg: Any) -> Path:
    """--champion's folder, else the champion the gate would compare with (gate.champion, or the registry's prod)."""
    from tasks.core.paths import ArtifactPaths
    from tasks.gate import resolve_champion
    from tasks.judging.label_queue import LabelQueueError

    if args.champion:
        return Path(args.champion)
    champion = resolve_champion(cfg, ArtifactPaths(root))
    if champion is None:
        raise LabelQueueError("no champion to compare with (gate.champion null, nothing in the registry's prod "
                              "stage): pass --champion FOLDER")
    return champion.folder


def gate_decision(root: Path, force: bool) -> dict[str, Any]:
    """decision.json, refused unless its verdict is INCONCLUSIVE (or --force)."""
    from tasks.core.io import read_json
    from tasks.judging.compare import INCONCLUSIVE
    from tasks.judging.label_queue import LabelQueueError

    path = root / "artifacts" / "gate" / "decision.json"
    if not path.is_file():
        raise LabelQueueError(f"{path} is missing: run the pipeline (the gate) first")
    decision = read_json(path)
    if decision["decision"] != INCONCLUSIVE and not force:
        raise LabelQueueError(f"the gate's verdict is {decision['decision']}, not {INCONCLUSIVE}: nothing to "
                              "settle (--force queues the rows anyway)")
    return decision


def cmd_label_queue(args: argparse.Namespace) -> int:
    from tasks.core.config import load_config
    from tasks.core.io import file_sha256, write_json
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.label_queue import DISAGREE, build_queue, planned_labels

    root = Path(args.project).resolve()
    cfg = load_config(root / "params.yaml")
    decision = gate_decision(root, args.force)
    names = cfg.data.label_names
    texts = read_pool_texts(args.pool, root, cfg)
    candidate = Path(args.candidate) if args.candidate else root / "artifacts" / "gate" / "release"
    champion = champion_of(args, root, cfg)
    queue = build_queue(texts, predicted_classes(champion, texts, names), predicted_classes(candidate, texts, names),
                        names, cfg.seed, args.agreements, args.disagreements)
    comparison = decision.get("comparison")
    # The gate's test figures say how far from the margin the difference sits; without them, no difference.
    difference = comparison["differences"]["accuracy"]["value"] if comparison else 0.0
    pool_share = float(queue.loc[queue["stratum"] == DISAGREE, "stratum_rows"].max() / len(texts)) \
        if (queue["stratum"] == DISAGREE).any() else 0.0
    rate = comparison["disagreement"] if comparison else pool_share
    planned = planned_labels(queue, difference, rate, cfg.gate.margin, cfg.gate.confidence)
    out = Path(args.out) if args.out else ArtifactPaths(root).label_queue
    out.parent.mkdir(parents=True, exist_ok=True)
    # The data's own column names: a filled-in queue is a labelled batch for monitor.labelled_dir as it stands.
    queue.rename(columns={"text": cfg.data.text_column, "label": cfg.data.label_column}).to_csv(out, index=False)
    summary = {"decision_sha256": file_sha256(ArtifactPaths(root).decision),  # the decision it would settle
               "pool": args.pool, "pool_rows": len(texts), "queue": str(out), "queue_rows": len(queue),
               "candidate": str(candidate), "champion": str(champion), "verdict": decision["decision"],
               "strata": {s: int(queue.loc[queue["stratum"] == s, "stratum_rows"].max())
                          if (queue["stratum"] == s).any() else 0 for s in ("disagree", "agree")},
               "gate_difference": difference, "gate_disagreement": rate, "planned": planned}
    write_json(out.with_suffix(".json"), summary)
    print_queue_summary(summary)
    return 0


def print_queue_summary(summary: dict[str, Any]) -> None:
    strata, planned = summary["strata"], summary["planned"]
    pool = summary["pool_rows"]
    _plain(f"label-queue: {summary['pool']} pool of {pool} texts (gate verdict {summary['verdict']})")
    _plain(f"  disagreements: {strata['disagree']} ({strata['disagree'] / pool:.1%}); "
           f"agreements: {strata['agree']}")
    _plain(f"  queue: {summary['queue_rows']} rows ->")
    _plain(f"    {summary['queue']}")
    needed = planned["queue_rows"]
    at = (f"gate's difference {summary['gate_difference']:+.4f}, disagreement {summary['gate_disagreement']:.1%}")
    _plain(f"  at the {at}:")
    _plain("  labels needed: " + (f"{needed} from the top of the queue ({planned['disagreements']} "
                                   "disagreements)" if needed is not None else
                                   "more than this pool holds, or none settles it"))
    _plain("  label in queue order; put the filled file in monitor.labelled_dir,")
    _plain("  then: tunegate label-queue judge")


def cmd_label_queue_judge(args: argparse.Namespace) -> int:
    from tasks.core.config import load_config
    from tasks.core.paths import ArtifactPaths
    from tasks.judging.label_queue import LabelQueueError
    from tasks.monitoring.label_verdict import judge_queue

    root = Path(args.project).resolve()
    cfg = load_config(root / "params.yaml")
    if args.labelled is None and cfg.monitor.labelled_dir is None:
        raise LabelQueueError("monitor.labelled_dir is null: pass --labelled DIR")
    out = Path(args.out) if args.out else ArtifactPaths(root).label_verdict
    judged = judge_queue(cfg, Path(args.queue) if args.queue else ArtifactPaths(root).label_queue,
                         Path(args.labelled) if args.labelled else root / cfg.monitor.labelled_dir, out)
    print_judged(judged, out)
    return 0


def print_judged(judged: dict[str, Any], out: Path) -> None:
    from tasks.judging.report import format_span

    strata = judged["strata"]
    _plain(f"label-queue judge: pool {judged['rows']} rows; labelled "
           f"{strata['disagree']['labelled']}/{strata['disagree']['rows']} disagree, "
           f"{strata['agree']['labelled']}/{strata['agree']['rows']} agreements")
    left = [f"{judged[k]} {k.replace('_', ' ')}" for k in ("not_in_queue", "repeated", "bad_rows") if judged[k]]
    if left:
        _plain("  left out: " + ", ".join(left))
    if judged["out_of_order"]:
        _plain(f"  {judged['out_of_order']} queue rows skipped above labelled ones: the estimate assumes they "
               "were skipped at random")
    if judged["differences"] is not None:
        for model in ("champion", "candidate"):
            figure = judged["accuracy"][model]
            _plain(f"  {model + ' accuracy':<20} {figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]")
        for name, label in (("accuracy", "accuracy diff"), ("macro_f1", "macro-F1 diff")):
            _plain(f"  {label:<20} {format_span(judged['differences'][name], signed=True)}  (margin {judged['margin']:g})")
    _plain(f"verdict: {judged['outcome']}")
    _plain(textwrap.fill(f"why: {judged['why']}", width=80, initial_indent="  ", subsequent_indent="    "))
    if judged["labels_needed"] is not None:
        _plain(f"  about {judged['labels_needed']} queue rows from the top would settle the accuracy difference")
    _plain(f"  -> {out}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """label-queue, label-queue judge."""
    queue = sub.add_parser(
        "label-queue", help="rows whose labels would settle an INCONCLUSIVE comparison; judge them once labelled",
        description="Score a pool of texts (the test split, the prediction log's texts, or a file's text column) "
                    "with the candidate and the champion, and write the rows to label: every text the two label "
                    "differently and a seeded sample of the rest, in a random order that may be cut anywhere. "
                    "Refuses unless artifacts/gate/decision.json says INCONCLUSIVE (--force). `label-queue judge` "
                    "re-judges the comparison from the labelled rows (importance-weighted), by the gate's rule.")
    queue.add_argument("--pool", default="live", metavar="test|live|FILE",
                       help="texts to queue: live (serve.log_dir, needs serve.log_texts), test (the test split) "
                            "or a CSV/Parquet/JSONL file with data.text_column (default: live)")
    queue.add_argument("--candidate", default=None, metavar="DIR",
                       help="the candidate's served folder (default: artifacts/gate/release)")
    queue.add_argument("--champion", default=None, metavar="DIR",
                       help="the champion's served folder (default: the gate's: gate.champion or the registry's "
                            "prod version)")
    queue.add_argument("--agreements", type=int, default=None, metavar="N",
                       help="agreement rows sampled (default: a quarter as many as disagreements)")
    queue.add_argument("--disagreements", type=int, default=None, metavar="N",
                       help="disagreement rows sampled (default: all)")
    queue.add_argument("--out", default=None, metavar="CSV", help="the queue (default: artifacts/gate/label_queue.csv)")
    queue.add_argument("--force", action="store_true", help="queue even when the verdict is not INCONCLUSIVE")
    queue.add_argument("--project", default=".", help="project root (default: current folder)")
    queue.set_defaults(func=cmd_label_queue)
    queue_sub = queue.add_subparsers(dest="label_queue_command", required=False, metavar="judge")
    judge = queue_sub.add_parser(
        "judge", help="re-judge the comparison from the labelled queue rows",
        description="Read every labelled file under --labelled (default: monitor.labelled_dir; the data's text "
                    "and label columns), match its rows to the queue by text, and print each model's "
                    "importance-weighted accuracy, the candidate - champion differences with intervals, and the "
                    "verdict by the gate's rule; writes the JSON beside the queue (or --out).")
    judge.add_argument("--queue", default=None, metavar="CSV", help="the queue (default: artifacts/gate/label_queue.csv)")
    judge.add_argument("--labelled", default=None, metavar="DIR", help="labelled files (default: monitor.labelled_dir)")
    judge.add_argument("--out", default=None, metavar="JSON", help="the verdict (default: beside the queue)")
    judge.add_argument("--project", default=".", help="project root (default: current folder)")
    judge.set_defaults(func=cmd_label_queue_judge)
