"""Accuracy on current traffic, measured against known labels: the shipped model's test rows reweighted toward live
streams whose labels are known (tasks/judging/reweight.py, settings gate.live_traffic), beside the accuracy the model
really has on each stream. The streams are texts no stage trained on:

  dev             the dev split as it is: like the test split, so the weighted figure should match the plain one
  dev_short       dev rows of at most --short-words words: a shift within the domain
  dev_one_class   dev rows the model labels with the first class: a shift by a function of the text
  dev_words       dev rows holding any of --words (whole words, any case): a shift in what the texts talk about
  imdb_unseen     --imdb-rows IMDB reviews of the data in no split (and not distill's transfer texts): mostly outside
                  the test split's support, expected to be "overlap too small"

    python benchmarks/live_accuracy.py                  # make bench-reweight
    python benchmarks/live_accuracy.py --imdb-rows 200 --model artifacts/quantize/onnx --seed 7

Needs a finished pipeline run (artifacts/prepare and the served folder). Prints a table and one JSON line:
  {"test_accuracy": {...}, "streams": {"dev": {"rows": ..., "verdict": ..., "weighted": {...} | null,
   "effective_rows": ..., "live_share_supported": ..., "realized": ..., "covered": true | false | null, ...}, ...},
   "settings": {...}, "model": ..., "seed": ..., ...}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._targets import publish  # noqa: E402
from benchmarks.long_reviews import seeded_sample, seen_keys, unseen_rows  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.judging.reweight import accuracy_on_live_traffic  # noqa: E402
from tasks.judging.stats import accuracy_interval  # noqa: E402
from tasks.runtime.files import PREDICT_BATCH_SIZE  # noqa: E402
from tasks.runtime.onnx_model import OnnxClassifier  # noqa: E402
from tasks.runtime.predict import load_served_model, predict_texts  # noqa: E402

TEXT, LABEL = "text", "label"


def predicted_ids(model: OnnxClassifier, texts: list[str], cfg: PipelineConfig, batch_size: int) -> np.ndarray:
    """The model's labels as class indices of data.label_names, through predict's code path."""
    index = {name: i for i, name in enumerate(cfg.data.label_names)}
    return np.array([index[name] for name in predict_texts(model, texts, batch_size)["predicted_label"]])


def labelled_split(paths: ArtifactPaths, split: str) -> pd.DataFrame:
    """A prepare split as (text, class index)."""
    frame = pd.read_parquet(paths.split(split))
    return pd.DataFrame({TEXT: frame[TEXT].to_list(), LABEL: frame[LABEL].astype(int).to_list()})


def streams(paths: ArtifactPaths, cfg: PipelineConfig, model: OnnxClassifier, args: argparse.Namespace,
            seed: int) -> dict[str, pd.DataFrame]:
    """Each live stream as (text, class index, predicted class index): see the module."""
    dev = labelled_split(paths, "dev")
    dev["predicted"] = predicted_ids(model, dev[TEXT].to_list(), cfg, args.batch_size)
    imdb = seeded_sample(unseen_rows(load_dataset(paths.root, cfg.data), cfg, args.source, seen_keys(paths)),
                         args.imdb_rows, seed)
    index = {name: i for i, name in enumerate(cfg.data.label_names)}
    words = {word.lower() for word in args.words.split(",")}
    imdb = pd.DataFrame({TEXT: imdb[TEXT].to_list(), LABEL: [index[name] for name in imdb[LABEL]]})
    imdb["predicted"] = predicted_ids(model, imdb[TEXT].to_list(), cfg, args.batch_size)
    return {"dev": dev,
            "dev_short": dev[dev[TEXT].str.split().str.len() <= args.short_words].reset_index(drop=True),
            "dev_one_class": dev[dev["predicted"] == 0].reset_index(drop=True),
            "dev_words": dev[dev[TEXT].map(lambda text: bool(words & set(text.lower().split())))]
            .reset_index(drop=True),
            f"{args.source}_unseen": imdb}


def stream_figures(test: pd.DataFrame, stream: pd.DataFrame, cfg: PipelineConfig, seed: int) -> dict:
    """The reweighted estimate for one stream (texts only), and what the stream's labels say it should be."""
    live = cfg.gate.live_traffic
    found = accuracy_on_live_traffic(
        test[TEXT].to_list(), test[LABEL].to_numpy(), test["predicted"].to_numpy(), stream[TEXT].to_list(),
        len(cfg.data.label_names), folds=live.folds, max_texts=live.max_texts, max_weight=live.max_weight,
        min_effective_rows=live.min_effective_rows, min_supported_share=live.min_supported_share,
        samples=cfg.gate.bootstrap_samples, confidence=cfg.gate.confidence, seed=seed)
    realized = float((stream[LABEL] == stream["predicted"]).mean()) if len(stream) else None
    weighted = found["weighted"]["accuracy"] if found["weighted"] else None
    covered = (weighted["low"] <= realized <= weighted["high"]) if weighted and realized is not None else None
    return {"rows": len(stream), "verdict": found["verdict"], "why": found["why"],
            "weighted": _rounded(weighted), "weighted_macro_f1": _rounded(found["weighted"]["macro_f1"]
                                                                          if found["weighted"] else None),
            "effective_rows": _round(found["effective_rows"], 1), "live_share_supported":
                _round(found["live_share_supported"], 4), "domain_auc": _round(found["domain_auc"], 4),
            "clipped_test_rows": found["clipped_test_rows"], "realized": _round(realized, 4), "covered": covered}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded(span: dict | None) -> dict | None:
    return None if span is None else {key: round(value, 4) for key, value in span.items()}


def print_table(result: dict) -> None:
    test = result["test_accuracy"]
    print(f"model {result['model']}")
    print(f"test split: {result['test_rows']} rows, accuracy {test['value']:.4f} [{test['low']:.4f}, "
          f"{test['high']:.4f}] ({result['confidence']:.0%} intervals)")
    print(f"max_weight {result['settings']['max_weight']:g}, "
          f"min_effective_rows {result['settings']['min_effective_rows']}, min_supported_share "
          f"{result['settings']['min_supported_share']:g}")
    print(f"{'live stream':<16}{'rows':>6}{'ESS':>7}{'share':>7}  {'weighted [interval]':<24}{'realized':>9}"
          f"{'covers':>8}")
    for name, figures in result["streams"].items():
        weighted = figures["weighted"]
        shown = (f"{weighted['value']:.3f} [{weighted['low']:.3f}, {weighted['high']:.3f}]" if weighted
                 else figures["verdict"])
        ess = "-" if figures["effective_rows"] is None else f"{figures['effective_rows']:.0f}"
        share = "-" if figures["live_share_supported"] is None else f"{figures['live_share_supported']:.2f}"
        covers = {True: "yes", False: "no", None: "-"}[figures["covered"]]
        realized = "-" if figures["realized"] is None else f"{figures['realized']:.3f}"
        print(f"{name:<16}{figures['rows']:>6}{ess:>7}{share:>7}  {shown:<24}{realized:>9}{covers:>8}")


def measure(args: argparse.Namespace) -> dict:
    paths = ArtifactPaths(Path(args.project).resolve())
    cfg = load_config(Path(args.params) if args.params else paths.root / "params.yaml")
    seed = cfg.seed if args.seed is None else args.seed
    folder = Path(args.model) if args.model else paths.stage_dir("gate") / "release"
    model = load_served_model(folder)
    test = labelled_split(paths, "test")
    test["predicted"] = predicted_ids(model, test[TEXT].to_list(), cfg, args.batch_size)
    figures = {name: stream_figures(test, stream, cfg, seed)
               for name, stream in streams(paths, cfg, model, args, seed).items()}
    correct = (test[LABEL] == test["predicted"]).to_numpy()
    test_accuracy = accuracy_interval(correct, cfg.gate.bootstrap_samples, cfg.gate.confidence, seed)
    return {"test_accuracy": _rounded(test_accuracy), "test_rows": len(test), "streams": figures,
            "settings": cfg.gate.live_traffic.model_dump(), "short_words": args.short_words, "words": args.words,
            "model": str(folder), "seed": seed, "confidence": cfg.gate.confidence,
            "bootstrap_samples": cfg.gate.bootstrap_samples}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root with a finished pipeline run")
    parser.add_argument("--params", help="params.yaml to read (default: PROJECT/params.yaml)")
    parser.add_argument("--model", help="served folder (default: the project's artifacts/gate/release)")
    parser.add_argument("--imdb-rows", type=int, default=500, help="unseen reviews of --source (default %(default)s)")
    parser.add_argument("--source", default="imdb", help="the data's source of the out-of-domain stream")
    parser.add_argument("--short-words", type=int, default=12, help="dev_short: texts of at most this many words")
    parser.add_argument("--words", default="funny,comedy,laughs,humor,jokes",
                        help="dev_words: texts holding any of these comma-separated words")
    parser.add_argument("--seed", type=int, help="seed of the samples, folds and intervals (default: params seed)")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="texts per model call")
    parser.add_argument("--out", default="benchmarks/results/live_accuracy.json", help="where to keep the JSON")
    args = parser.parse_args(argv)
    result = measure(args)
    return publish(result, print_table, Path(args.out))


if __name__ == "__main__":
    main()
