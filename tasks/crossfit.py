"""The real model cross-fitted on the train split: out-of-sample probabilities for the label-issue detector.

prepare's detector (tasks/contracts/label_issues.py) reads a logistic regression on TF-IDF, which is right about 3
times in 4 on the default data and costs seconds. Here the model the run fine-tunes does the scoring: the train split
is cut in FOLDS stratified, seeded folds, the base model is fine-tuned by the train stage's fit path (train.*
params; best epoch chosen on dev) on all folds but one, and scores that one by its head (train.max_length tokens).
No row is scored by a model that saw its label. Two folds make two fine-tunings on half the rows: about the cost of
one training run. `tunegate label-issues` runs it on demand; `make bench-labels` measures it against TF-IDF
(benchmarks/label_noise.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.errors import TunegateError

if TYPE_CHECKING:  # `tunegate serve` builds the CLI, which names DETECTORS, on an install without pandas
    import pandas as pd

    from tasks.core.config import PipelineConfig

FOLDS = 2  # two fine-tunings on half the rows each: about the cost of one training run
# The detectors `tunegate label-issues` and `make bench-labels` offer beyond prepare's feature sets: the fine-tuned
# model alone, and its probabilities averaged with TF-IDF's (both out of sample, so their mean is too).
FINETUNED, ENSEMBLE = "finetuned", "finetuned+tfidf"
DETECTORS = (FINETUNED, ENSEMBLE)


class MissingSplitError(TunegateError):
    """A split prepare writes is not there: prepare has not run in this project."""


def read_prepared_split(project: Path, split: str) -> pd.DataFrame:
    """One of prepare's splits (artifacts/prepare/<split>.parquet), or MissingSplitError naming how to make it."""
    import pandas as pd

    from tasks.core.paths import ArtifactPaths

    path = ArtifactPaths(project).split(split)
    if not path.is_file():
        raise MissingSplitError(f"{path} is missing: run the prepare stage first (`dvc repro prepare`, "
                                "`tunegate run` or `make run`)")
    return pd.read_parquet(path)


def fine_tuned_model(rows: pd.DataFrame, dev: pd.DataFrame, cfg: PipelineConfig, project: Path,
                     work: Path) -> tuple[Any, Any]:
    """(model, tokenizer): the base model fine-tuned on `rows` by the train stage's fit path (train.* params, on
    CPU; best epoch chosen on `dev`), with its best epoch's weights."""
    import torch

    from tasks.core.base_model import resolve_base_model
    from tasks.train import build_model, fit

    base, _ = resolve_base_model(cfg.train.base_model, project)
    model, tokenizer = build_model(base, cfg.data.label_names, cfg.seed)
    outcome = fit(model, tokenizer, rows, dev, cfg.train, cfg.data.label_names, cfg.seed, torch.device("cpu"),
                  checkpoint_dir=work / "checkpoints", token_cache=work / "tokens")
    model.load_state_dict(outcome.best_state)
    return model, tokenizer


def head_logits(model: Any, tokenizer: Any, texts: list[str], cfg: PipelineConfig) -> np.ndarray:
    """[n, classes] logits of the texts' heads (their first train.max_length tokens)."""
    import torch

    from tasks.training.modeling import torch_logits

    return torch_logits(model, tokenizer, texts, cfg.train.max_length, cfg.train.eval_batch_size,
                        torch.device("cpu"), long_text={"rule": "head"})


def finetuned_probabilities(rows: pd.DataFrame, dev: pd.DataFrame, cfg: PipelineConfig,
                            project: Path) -> np.ndarray:
    """(rows, classes) probabilities of each row's classes (`rows`: text, label), each from the model fine-tuned
    on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    from tasks.core.metrics import softmax

    labels = rows["label"].to_numpy()
    probabilities = np.zeros((len(rows), len(cfg.data.labels)))
    splitter = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=cfg.seed)
    with tempfile.TemporaryDirectory(prefix="tunegate-crossfit-") as tmp:
        for fold, (fit_rows, scored_rows) in enumerate(splitter.split(rows, labels)):
            work = Path(tmp) / f"fold-{fold}"
            work.mkdir()
            model, tokenizer = fine_tuned_model(rows.iloc[fit_rows].reset_index(drop=True), dev, cfg, project, work)
            scored = rows["text"].iloc[scored_rows].tolist()
            probabilities[scored_rows] = softmax(head_logits(model, tokenizer, scored, cfg))
    return probabilities


def detector_probabilities(detector: str, rows: pd.DataFrame, dev: pd.DataFrame | None, cfg: PipelineConfig,
                           project: Path, fine_tuned: np.ndarray | None = None) -> np.ndarray:
    """Out-of-sample probabilities of one of DETECTORS on `rows` (text, label); `fine_tuned`: the FINETUNED
    detector's probabilities of the same rows and labels when already computed (both detectors read them; `dev`,
    which the fine-tunings choose their best epoch on, is then not read)."""
    from tasks.contracts.label_issues import out_of_sample_probabilities

    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}: one of {', '.join(DETECTORS)}")
    if fine_tuned is None:
        if dev is None:
            raise ValueError("the fine-tunings need the dev split")
        fine_tuned = finetuned_probabilities(rows, dev, cfg, project)
    if detector == FINETUNED:
        return fine_tuned
    tfidf = out_of_sample_probabilities(rows["text"].tolist(), rows["label"].to_numpy(), len(cfg.data.labels),
                                        cfg.prepare.label_issues.folds, cfg.seed)
    return (fine_tuned + tfidf) / 2
