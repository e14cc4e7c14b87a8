"""A labelling budget that settles an INCONCLUSIVE champion comparison.

Two models' accuracies differ only on the rows where their labels disagree: where they agree both are right or
both wrong, and the row adds nothing to the difference. So the rows worth labelling are the disagreements, plus a
small sample of agreements (for each model's own accuracy and for macro-F1, which the agreements do move).

Design: a pool of texts with both models' labels falls into two strata, `disagree` and `agree`, whose sizes are
known without any label. The queue holds every disagreement (or a seeded share) and a seeded sample of
agreements, each stratum in its own random order, interleaved evenly. Any prefix of the queue is then a simple
random sample within each stratum, so labelling in queue order and stopping at any point is an unbiased design:
the estimates weight each labelled row of stratum h by N_h / k_h (k_h: labelled rows of h, the Horvitz-Thompson
weight of a stratified sample).

Interval: the pool is itself a sample of traffic (as the gate's test split is), so the variance has the two
phases of double sampling for stratification (Cochran 12.2): sum_h W_h^2 s_h^2 / k_h + sum_h W_h (ybar_h -
ybar)^2 / N, W_h = N_h / N. Fully labelled, it is the gate's paired SE^2, (p_disc - d^2) / N. Macro-F1 and each
model's accuracy take a two-phase bootstrap: stratum sizes redrawn (multinomial), labelled rows resampled within
each stratum. The verdict is the gate's rule for the champion comparison (compare.py): non-inferiority against
gate.margin at gate.confidence, on accuracy and macro-F1.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import GateConfig
from tasks.core.errors import TunegateError
from tasks.core.metrics import per_class_rates
from tasks.judging.compare import INCONCLUSIVE, METRIC_NAMES, PROMOTE, REJECT, non_inferiority
from tasks.judging.report import format_span
from tasks.judging.stats import BLOCK, span, z_value

DISAGREE, AGREE = "disagree", "agree"
STRATA = (DISAGREE, AGREE)
# Agreement rows settle nothing in the accuracy difference; they are there for each model's accuracy and for
# macro-F1, which a quarter as many rows as disagreements pins down well enough (the disagreements decide).
AGREEMENT_ROWS_PER_DISAGREEMENT = 0.25
# A stratum's variance needs two labelled rows; fewer leaves the verdict open whatever the rows say.
MIN_LABELLED_PER_STRATUM = 2
# What a queue file holds (label is the labeller's column, blank until labelled).
QUEUE_COLUMNS = ("rank", "id", "text", "label", "stratum", "stratum_rows", "inclusion_probability",
                 "champion_label", "candidate_label", "champion_class", "candidate_class")


class LabelQueueError(TunegateError):
    """A queue or labelled rows that cannot be judged: missing columns, unknown ids, mismatched labels."""


def row_ids(texts: list[str]) -> list[str]:
    """A stable id per text (sha256 of its UTF-8 bytes): how labelled rows find their queue row."""
    return [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]


def strata_of(champion: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Each pool row's stratum: `disagree` where the two models' labels differ, else `agree`."""
    return np.where(np.asarray(champion) != np.asarray(candidate), DISAGREE, AGREE)


def default_agreement_rows(disagreements: int, agreements: int) -> int:
    """The agreement sample a queue takes by default: AGREEMENT_ROWS_PER_DISAGREEMENT per disagreement, at least
    enough for a variance, at most every agreement."""
    wanted = max(MIN_LABELLED_PER_STRATUM, math.ceil(AGREEMENT_ROWS_PER_DISAGREEMENT * disagreements))
    return min(agreements, wanted)


def interleaved_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An order of the rows in which each stratum's rows come in random order and the strata are spread evenly
    (row j of a stratum of n sits near j/n of the way down): every prefix is a random sample within each stratum."""
    keys = np.empty(len(strata))
    for stratum in STRATA:
        rows = np.flatnonzero(strata == stratum)
        shuffled = rng.permutation(rows)
        keys[shuffled] = (np.arange(len(rows)) + rng.random(len(rows))) / max(len(rows), 1)
    return np.argsort(keys, kind="stable")


def build_queue(texts: list[str], champion: np.ndarray, candidate: np.ndarray, label_names: list[str],
                seed: int, agreement_rows: int | None = None, disagreement_rows: int | None = None) -> pd.DataFrame:
    """The rows whose labels settle the comparison, in labelling order: every disagreement (or a seeded
    `disagreement_rows` of them) and a seeded sample of `agreement_rows` agreements (default_agreement_rows when
    None), each with its stratum, the stratum's size in the pool and its inclusion probability."""
    champion, candidate = np.asarray(champion, dtype=np.int64), np.asarray(candidate, dtype=np.int64)
    if not len(texts) == len(champion) == len(candidate):
        raise LabelQueueError(f"{len(texts)} texts, {len(champion)} champion and {len(candidate)} candidate labels")
    strata = strata_of(champion, candidate)
    sizes = {s: int((strata == s).sum()) for s in STRATA}
    wanted = {DISAGREE: sizes[DISAGREE] if disagreement_rows is None else min(disagreement_rows, sizes[DISAGREE])}
    wanted[AGREE] = (default_agreement_rows(wanted[DISAGREE], sizes[AGREE]) if agreement_rows is None
                     else min(agreement_rows, sizes[AGREE]))
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(strata == s), size=wanted[s], replace=False)
                             for s in STRATA])
    chosen = chosen[interleaved_order(strata[chosen], rng)]
    ids = row_ids([texts[i] for i in chosen])
    return pd.DataFrame({
        "rank": np.arange(1, len(chosen) + 1), "id": ids, "text": [texts[i] for i in chosen],
        "label": pd.Series([None] * len(chosen), dtype=object), "stratum": strata[chosen],
        "stratum_rows": [sizes[s] for s in strata[chosen]],
        "inclusion_probability": [wanted[s] / sizes[s] for s in strata[chosen]],
        "champion_label": [label_names[c] for c in champion[chosen]],
        "candidate_label": [label_names[c] for c in candidate[chosen]],
        "champion_class": champion[chosen], "candidate_class": candidate[chosen]})


def pool_frame(texts: list[str], champion: np.ndarray, candidate: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """Every pool row in the queue's columns and in pool order (what uniform sampling of the pool draws from)."""
    queue = build_queue(texts, champion, candidate, label_names, seed=0, agreement_rows=len(texts))
    return queue.set_index("id").loc[row_ids(texts)].reset_index()[list(queue.columns)]


# ----- re-judging ---------------------------------------------------------------------------------------------


def labelled_rows(queue: pd.DataFrame, ids: list[str], classes: np.ndarray) -> tuple[pd.DataFrame, dict[str, int]]:
    """The queue rows that came back labelled (true class in column `true_class`), and counts of what was left
    out: labelled rows not in the queue, and repeats of an id (the last label given counts)."""
    missing = [c for c in ("id", "stratum", "stratum_rows", "champion_class", "candidate_class", "rank")
               if c not in queue]
    if missing:
        raise LabelQueueError(f"the queue has no column {', '.join(map(repr, missing))}: pass the file "
                              "`tunegate label-queue` wrote")
    given = pd.DataFrame({"id": list(ids), "true_class": np.asarray(classes, dtype=np.int64)})
    repeats = int(given["id"].duplicated(keep="last").sum())
    given = given.drop_duplicates("id", keep="last")
    known = given["id"].isin(queue["id"])
    rows = queue.merge(given[known], on="id", how="inner")
    return rows, {"not_in_queue": int((~known).sum()), "repeated": repeats}


def stratum_sizes(queue: pd.DataFrame) -> dict[str, int]:
    """Pool rows per stratum, as the queue records them (0 for a stratum it holds no row of)."""
    sizes = queue.groupby("stratum")["stratum_rows"].agg(["min", "max"])
    if (sizes["min"] != sizes["max"]).any():
        raise LabelQueueError("the queue's stratum_rows differ within a stratum: the file was edited or mixed")
    return {s: int(sizes["max"].get(s, 0)) for s in STRATA}


def accuracy_difference(sizes: dict[str, int], difference_rows: np.ndarray, confidence: float) -> dict[str, float]:
    """candidate - champion accuracy on the pool from the labelled disagreements' (candidate right - champion
    right): {value, low, high, se}, the normal interval of the two-phase variance. Two pseudo-rows (+1 and -1)
    enter the variance only (as Agresti-Caffo's do), so a few labels that all agree cannot claim a zero SE."""
    pool = sizes[DISAGREE] + sizes[AGREE]
    share = sizes[DISAGREE] / pool
    mean = float(difference_rows.mean())
    spread = float(np.var(np.concatenate([difference_rows, [1.0, -1.0]]), ddof=1))
    variance = share ** 2 * spread / len(difference_rows) + share * (1 - share) * mean ** 2 / pool
    se = math.sqrt(variance)
    value, half = share * mean, z_value(confidence) * se
    return {"value": value, "low": value - half, "high": value + half, "se": se, "disagreement_mean": mean,
            "disagreement_variance": spread}


def weighted_confusions(rows: pd.DataFrame, weights: dict[str, np.ndarray], pick: dict[str, np.ndarray],
                        predicted: str, n_classes: int) -> np.ndarray:
    """[k, actual, predicted] confusion matrices, each stratum's rows `pick`ed ([k, k_h] indices) and weighted by
    `weights` ([k] per stratum): the two-phase bootstrap's replicates (or the point estimate, k = 1)."""
    cells = n_classes * n_classes
    total = None
    for stratum, idx in pick.items():
        part = rows[rows["stratum"] == stratum]
        codes = (part["true_class"].to_numpy() * n_classes + part[predicted].to_numpy())[idx]
        offsets = np.arange(idx.shape[0])[:, None] * cells
        counts = np.bincount((offsets + codes).ravel(), weights=np.repeat(weights[stratum], idx.shape[1]),
                             minlength=idx.shape[0] * cells).reshape(idx.shape[0], n_classes, n_classes)
        total = counts if total is None else total + counts
    return total


def metrics_of(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of [k, actual, predicted] weighted confusion matrices."""
    totals = confusions.sum(axis=(1, 2))
    return {"accuracy": np.trace(confusions, axis1=1, axis2=2) / totals,
            "macro_f1": per_class_rates(confusions)[2].mean(axis=1)}


def two_phase_bootstrap(rows: pd.DataFrame, sizes: dict[str, int], n_classes: int, samples: int, seed: int
                        ) -> dict[str, dict[str, np.ndarray]]:
    """Per model, [samples] resampled accuracies and macro-F1s: stratum sizes redrawn from the pool's shares
    (the pool is a sample of traffic), labelled rows redrawn within each stratum, weights N*_h / k_h. Drawn in
    blocks of BLOCK resamples, so memory stays at BLOCK x labelled rows."""
    present = [s for s in STRATA if sizes[s]]
    pool = sum(sizes.values())
    rng = np.random.default_rng(seed)
    counts = {s: int((rows["stratum"] == s).sum()) for s in present}
    blocks: dict[str, list[dict[str, np.ndarray]]] = {"champion": [], "candidate": []}
    for start in range(0, samples, BLOCK):
        k = min(BLOCK, samples - start)
        redrawn = rng.multinomial(pool, [sizes[s] / pool for s in present], size=k)
        pick = {s: rng.integers(0, counts[s], size=(k, counts[s])) for s in present}
        weights = {s: redrawn[:, i] / counts[s] for i, s in enumerate(present)}
        for model, parts in blocks.items():
            parts.append(metrics_of(weighted_confusions(rows, weights, pick, f"{model}_class", n_classes)))
    return {model: {name: np.concatenate([p[name] for p in parts]) for name in ("accuracy", "macro_f1")}
            for model, parts in blocks.items()}


def point_metrics(rows: pd.DataFrame, sizes: dict[str, int], n_classes: int) -> dict[str, dict[str, float]]:
    """Per model, the Horvitz-Thompson (N_h / k_h weighted) accuracy and the weighted macro-F1 on the pool."""
    present = [s for s in STRATA if sizes[s]]
    counts = {s: int((rows["stratum"] == s).sum()) for s in present}
    pick = {s: np.arange(counts[s])[None, :] for s in present}
    weights = {s: np.array([sizes[s] / counts[s]]) for s in present}
    return {model: {name: float(v[0]) for name, v in metrics_of(
        weighted_confusions(rows, weights, pick, f"{model}_class", n_classes)).items()}
        for model in ("champion", "candidate")}


def with_pseudo_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows plus two pseudo-disagreements for the bootstrap only (the accuracy variance's +1 and -1):
    a copy of the first labelled disagreement labelled as the candidate says, and one as the champion says, so that
    a few labels that all point one way cannot resample into a zero-width interval."""
    first = rows[rows["stratum"] == DISAGREE].head(1)
    if first.empty:
        return rows
    pseudo = pd.concat([first.assign(true_class=first["candidate_class"]),
                        first.assign(true_class=first["champion_class"])], ignore_index=True)
    return pd.concat([rows, pseudo], ignore_index=True)


def disagreement_labels_needed(sizes: dict[str, int], estimate: dict[str, float], margin: float,
                               confidence: float) -> int | None:
    """Labelled disagreements at which the accuracy interval, at the observed mean and variance, no longer
    straddles -margin: k = W^2 s^2 / ((|d + margin| / z)^2 - W (1 - W) m^2 / N). None when no count does: the
    estimate sits on the bound, or the pool's own uncertainty (the second term) already exceeds the distance, or
    it would take more disagreements than the pool holds."""
    pool = sizes[DISAGREE] + sizes[AGREE]
    share, mean = sizes[DISAGREE] / pool, estimate["disagreement_mean"]
    room = (abs(estimate["value"] + margin) / z_value(confidence)) ** 2 - share * (1 - share) * mean ** 2 / pool
    if room <= 0:
        return None
    needed = math.ceil(share ** 2 * estimate["disagreement_variance"] / room)
    return needed if needed <= sizes[DISAGREE] else None


def queue_rows_for(queue: pd.DataFrame, disagreements: int | None) -> int | None:
    """Queue rows to label from the top to hold `disagreements` disagreements (None when the queue holds fewer)."""
    if disagreements is None:
        return None
    ranks = np.sort(queue.loc[queue["stratum"] == DISAGREE, "rank"].to_numpy())
    if disagreements == 0:
        return 0
    return int(ranks[disagreements - 1]) if disagreements <= len(ranks) else None


def out_of_order(queue: pd.DataFrame, rows: pd.DataFrame) -> int:
    """Unlabelled queue rows ranked above the last labelled row of their stratum: labels skipped by the labeller,
    which the design assumes are skipped at random (0 when the queue was labelled in order)."""
    skipped = 0
    for stratum in STRATA:
        labelled = rows.loc[rows["stratum"] == stratum, "rank"]
        if len(labelled):
            ahead = queue[(queue["stratum"] == stratum) & (queue["rank"] <= labelled.max())]
            skipped += len(ahead) - len(labelled)
    return skipped


def explain(outcome: str, names: list[str], differences: dict[str, dict[str, float]], margin: float) -> str:
    parts = [f"{METRIC_NAMES[n]} difference {format_span(differences[n], signed=True)}" for n in names]
    if outcome == REJECT:
        return "; ".join(f"{p}, entirely below -{margin:g}" for p in parts) + " (importance-weighted labels)"
    if outcome == PROMOTE:
        return "non-inferior: " + "; ".join(f"{p}, lower end above -{margin:g}" for p in parts) + \
            " (importance-weighted labels)"
    return "; ".join(f"{p} straddles -{margin:g}" for p in parts)


def rejudge(queue: pd.DataFrame, ids: list[str], classes: np.ndarray, n_classes: int, cfg: GateConfig,
            seed: int) -> dict[str, Any]:
    """Re-judge the champion comparison from labelled queue rows (`ids` with their true `classes`, class indices):
    importance-weighted accuracy and macro-F1 of both models on the pool, the candidate - champion differences
    with intervals, and the outcome by the gate's rule, shaped as compare.compare_predictions' result (rows,
    margin, differences, disagreement, rows_needed, outcome, why) plus the design's figures."""
    rows, dropped = labelled_rows(queue, ids, classes)
    sizes = stratum_sizes(queue)
    pool = sizes[DISAGREE] + sizes[AGREE]
    counts = {s: int((rows["stratum"] == s).sum()) for s in STRATA}
    record: dict[str, Any] = {
        "rows": pool, "margin": cfg.margin, "confidence": cfg.confidence, "disagreement": sizes[DISAGREE] / pool,
        "strata": {s: {"rows": sizes[s], "queued": int((queue["stratum"] == s).sum()), "labelled": counts[s]}
                   for s in STRATA},
        "labelled": len(rows), **dropped, "out_of_order": out_of_order(queue, rows)}
    short = [s for s in STRATA if sizes[s] and counts[s] < MIN_LABELLED_PER_STRATUM]
    if short or pool < cfg.min_compare_rows:
        why = (f"the pool holds {pool} rows (gate.min_compare_rows: {cfg.min_compare_rows})" if not short else
               "too few labelled rows: " + ", ".join(f"{counts[s]} {s}" for s in short) +
               f" (at least {MIN_LABELLED_PER_STRATUM} of each; label the queue from the top)")
        return {**record, "differences": None, "accuracy": None, "macro_f1": None, "rows_needed": None,
                "labels_needed": None, "outcome": INCONCLUSIVE, "why": why}
    disagreements = rows.loc[rows["stratum"] == DISAGREE]
    difference_rows = ((disagreements["candidate_class"] == disagreements["true_class"]).to_numpy(float)
                       - (disagreements["champion_class"] == disagreements["true_class"]).to_numpy(float))
    accuracy = (accuracy_difference(sizes, difference_rows, cfg.confidence) if sizes[DISAGREE] else
                {"value": 0.0, "low": 0.0, "high": 0.0, "se": 0.0, "disagreement_mean": 0.0,
                 "disagreement_variance": 0.0})
    point = point_metrics(rows, sizes, n_classes)
    resampled = two_phase_bootstrap(with_pseudo_rows(rows), sizes, n_classes, cfg.bootstrap_samples, seed)
    macro_f1 = span(point["candidate"]["macro_f1"] - point["champion"]["macro_f1"],
                    resampled["candidate"]["macro_f1"] - resampled["champion"]["macro_f1"], cfg.confidence)
    differences = {"accuracy": {k: accuracy[k] for k in ("value", "low", "high", "se")}, "macro_f1": macro_f1}
    outcome, names = non_inferiority(differences, cfg.margin)
    needed = (None if outcome != INCONCLUSIVE or not sizes[DISAGREE] else
              disagreement_labels_needed(sizes, accuracy, cfg.margin, cfg.confidence))
    return {**record, "differences": differences,
            "accuracy": {m: span(point[m]["accuracy"], resampled[m]["accuracy"], cfg.confidence)
                         for m in ("champion", "candidate")},
            "macro_f1": {m: span(point[m]["macro_f1"], resampled[m]["macro_f1"], cfg.confidence)
                         for m in ("champion", "candidate")},
            "rows_needed": needed, "labels_needed": queue_rows_for(queue, needed),
            "outcome": outcome, "why": explain(outcome, names, differences, cfg.margin)}


def planned_labels(queue: pd.DataFrame, difference: float, disagreement: float, margin: float,
                   confidence: float) -> dict[str, int | None]:
    """Before any label: the disagreements (and queue rows from the top) needed to settle the accuracy comparison,
    at the gate's observed difference and disagreement rate (its test split's), on this pool's strata. The mean
    over disagreements is difference / disagreement, its variance 1 - mean^2 (two classes: each disagreement is
    +1 or -1; more classes only lower it)."""
    sizes = stratum_sizes(queue)
    if not sizes[DISAGREE]:
        return {"disagreements": 0, "queue_rows": 0}
    mean = difference / disagreement if disagreement else 0.0
    pool = sizes[DISAGREE] + sizes[AGREE]
    estimate = {"value": sizes[DISAGREE] / pool * mean, "disagreement_mean": mean,
                "disagreement_variance": max(1.0 - mean ** 2, 0.0)}
    needed = disagreement_labels_needed(sizes, estimate, margin, confidence)
    return {"disagreements": needed, "queue_rows": queue_rows_for(queue, needed)}
