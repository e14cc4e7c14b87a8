"""Label issues: rows whose given label a model fit without them disagrees with (confident learning).

The detector follows the confident joint of Northcutt et al. ("Confident Learning: Estimating Uncertainty in
Dataset Labels"): every row is scored by a model that never saw it (cross-fitted, stratified K folds), each class k
gets a threshold t_k = the mean probability of k over the rows labelled k, and a row is flagged when another class
clears its threshold and is the most probable of the classes that do. The queue ranks flagged rows by
self-confidence (the out-of-sample probability of the given label), lowest first.

The probabilities come from a cross-fitted logistic regression on one of two feature sets
(prepare.label_issues.features): `embeddings`, the base model's mean-pooled (attention-masked), L2-normalised
sentence embeddings, or `tfidf`, word 1-2 gram TF-IDF fit on the other folds. Why a linear model on fixed features
rather than the real fine-tuning: the default run trains one epoch, so there are no per-example dynamics across
epochs to read, and this costs seconds (TF-IDF) or one forward pass (embeddings) where cross-fitting the real model
costs about a training run. That one (tasks/crossfit.py, `tunegate label-issues`) reuses find_label_issues and finds
more flipped labels. How well each queue finds them is measured by `make bench-labels` (benchmarks/label_noise.py),
which plants flips at known rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from tasks.contracts.report import plain_check, skipped_check
from tasks.core.config import LabelIssuesConfig

# Below these the folds are too thin for a threshold per class to mean anything: the check skips itself.
MIN_ROWS = 50
MIN_ROWS_PER_CLASS_PER_FOLD = 2
CHECK, CHECK_NAME = "label_noise", "estimated label noise (train)"
# The feature sets prepare.label_issues.features accepts (one home: the config's Literal).
FEATURES: tuple[str, ...] = get_args(LabelIssuesConfig.model_fields["features"].annotation)
# Sentence embeddings read at most this many tokens: Rotten Tomatoes sentences average 27, so this cuts only long
# reviews, whose head carries most of their sentiment, and keeps the forward pass cheap (attention is quadratic).
EMBEDDING_MAX_TOKENS = 128
EMBEDDING_BATCH_ROWS = 64
QUEUE_COLUMNS = ("text", "given_label", "suggested_label", "score", "rank")


@dataclass(frozen=True)
class LabelIssues:
    """The flagged rows of a labelled table, most suspect first (`rows` index the input)."""

    rows: np.ndarray  # int64: input row numbers, ranked by score ascending
    suggested: np.ndarray  # int64: the class confident learning suggests for each flagged row
    scores: np.ndarray  # float64: the given label's out-of-sample probability (self-confidence)
    n_rows: int

    @property
    def noisy_share(self) -> float:
        """Estimated share of rows with a wrong label: flagged rows / rows."""
        return len(self.rows) / self.n_rows if self.n_rows else 0.0


def skip_reason(labels: np.ndarray, n_classes: int, folds: int) -> str | None:
    """Why the detector cannot run on these labels (too few rows, or a class too small for the folds); None if it can.
    """
    if len(labels) < MIN_ROWS:
        return f"{len(labels)} rows, fewer than {MIN_ROWS}"
    smallest = int(np.bincount(labels, minlength=n_classes).min())
    if smallest < MIN_ROWS_PER_CLASS_PER_FOLD * folds:
        return (f"the smallest class has {smallest} rows, fewer than {MIN_ROWS_PER_CLASS_PER_FOLD} per fold "
                f"x {folds} folds")
    return None


def sentence_embeddings(texts: Sequence[str], model_dir: str, max_tokens: int = EMBEDDING_MAX_TOKENS,
                        batch_rows: int = EMBEDDING_BATCH_ROWS) -> np.ndarray:
    """(rows, hidden) float32: each text's last hidden states averaged over its real tokens (attention-masked, heads
    of max_tokens), L2-normalised; the encoder at model_dir, in eval mode, without gradients."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # AutoModel: the bare encoder, also when model_dir holds a classifier (its head is not needed here).
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True).eval()  # never pickled weights
    encoded = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    # Batches of similar length pad less; the order (token count, then row) is a function of the texts alone, so the
    # batches, and so the floating-point sums, are the same on every run.
    order = sorted(range(len(encoded)), key=lambda row: (len(encoded[row]), row))
    embeddings = np.zeros((len(encoded), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad(), Progress(TextColumn("[bold]label issues[/] embedding train rows"), BarColumn(),
                                   MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                                   transient=True) as progress:
        bar = progress.add_task("", total=len(order))
        for start in range(0, len(order), batch_rows):
            rows = order[start:start + batch_rows]
            batch = tokenizer.pad({"input_ids": [encoded[row] for row in rows]}, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (batch, tokens, hidden)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1): 0 on padding
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            embeddings[rows] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            progress.advance(bar, len(rows))
    return embeddings


def out_of_sample_probabilities(texts: Sequence[str], labels: np.ndarray, n_classes: int, folds: int, seed: int,
                                embeddings: np.ndarray | None = None) -> np.ndarray:
    """(rows, n_classes) class probabilities, each row's from a logistic regression fit on the other folds (seeded,
    stratified K folds): no row is scored by a model that saw its label. Features: `embeddings` (rows, dim) when
    given, else word 1-2 gram TF-IDF fit on the other folds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    texts = np.asarray(list(texts), dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if embeddings is not None and len(embeddings) != len(texts):
        raise ValueError(f"{len(embeddings)} embeddings for {len(texts)} texts")
    probabilities = np.zeros((len(texts), n_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # The folds depend on the labels and the seed only: both feature sets are scored on the same folds.
    for fit_rows, scored_rows in splitter.split(texts, labels):
        if embeddings is None:
            # Fit on the other folds only: the vocabulary too, so a scored row's own words do not shape its features.
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
            fit_features = vectorizer.fit_transform(texts[fit_rows])
            scored_features = vectorizer.transform(texts[scored_rows])
        else:
            # The encoder never saw these labels: its embeddings of every row are out of sample already.
            fit_features, scored_features = embeddings[fit_rows], embeddings[scored_rows]
        model = LogisticRegression(solver="lbfgs", max_iter=1000)
        model.fit(fit_features, labels[fit_rows])
        # A class absent from the fitting folds keeps probability 0 for the scored rows.
        probabilities[np.ix_(scored_rows, model.classes_)] = model.predict_proba(scored_features)
    return probabilities


def class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class k: the mean probability of k over the rows labelled k (the confident joint's t_k)."""
    n_classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=n_classes)
    sums = np.zeros(n_classes)
    np.add.at(sums, labels, probabilities[np.arange(len(labels)), labels])
    # A class nobody carries can never be confidently suggested: an unreachable threshold.
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """The confident-learning flags: a row is an issue when some other class reaches its threshold and is the most
    probable of the classes that do; that class is the suggestion. Ranked by self-confidence, lowest first (ties
    by row number, so the order is a function of the inputs)."""
    labels = np.asarray(labels, dtype=np.int64)
    thresholds = class_thresholds(probabilities, labels)
    passing = probabilities >= thresholds
    masked = np.where(passing, probabilities, -np.inf)
    best = masked.argmax(axis=1)
    flagged = passing.any(axis=1) & (best != labels)
    rows = np.flatnonzero(flagged)
    scores = probabilities[rows, labels[rows]]
    order = np.lexsort((rows, scores))
    return LabelIssues(rows=rows[order].astype(np.int64), suggested=best[rows][order].astype(np.int64),
                       scores=scores[order].astype(np.float64), n_rows=len(labels))


def detect(texts: Sequence[str], labels: np.ndarray, n_classes: int, folds: int, seed: int,
           embeddings: np.ndarray | None = None) -> LabelIssues:
    """Out-of-sample probabilities (on `embeddings` when given, else TF-IDF), then confident learning's flags."""
    probabilities = out_of_sample_probabilities(texts, labels, n_classes, folds, seed, embeddings)
    return find_label_issues(probabilities, labels)


def issue_table(texts: Sequence[str], labels: np.ndarray, issues: LabelIssues, label_names: Sequence[str]) -> list:
    """The queue as records (QUEUE_COLUMNS; rank from 1), most suspect first."""
    names = np.asarray(list(label_names), dtype=object)
    texts = np.asarray(list(texts), dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    return [{"text": texts[row], "given_label": names[labels[row]], "suggested_label": names[suggested],
             "score": round(float(score), 6), "rank": rank}
            for rank, (row, suggested, score) in enumerate(zip(issues.rows.tolist(), issues.suggested.tolist(),
                                                                issues.scores.tolist()), start=1)]


def noise_check(suite: str, issues: LabelIssues, max_share: float, severity: str) -> dict:
    """The contract record: the estimated noisy share of the train rows against max_share."""
    share = issues.noisy_share
    hint = None if share <= max_share else (
        f"{len(issues.rows)} of {issues.n_rows} train rows look mislabelled: review the top of "
        "label_issues.csv and fix the data, or raise prepare.label_issues.max_noisy_share")
    return plain_check(suite, CHECK, severity, share <= max_share, name=CHECK_NAME, observed=round(share, 6),
                       hint=hint, max_value=max_share, flagged_rows=len(issues.rows), rows=issues.n_rows)


def skipped_noise_check(suite: str, reason: str) -> dict:
    """The contract record when the detector cannot run on this train split."""
    return skipped_check(suite, CHECK, CHECK_NAME, reason)
