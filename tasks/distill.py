"""distill: a smaller student cut from the trained model (layers dropped, FFN neurons kept by importance), then
trained to match it by knowledge distillation on the training split plus unlabelled transfer texts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from tasks.compression.kd import UNLABELLED, DistillOutcome, concat_tokens, distill_fit, mean_kl, token_batches
from tasks.compression.prune import build_student, encoder_layers, ffn_importance
from tasks.compression.transfer import Transfer, source_texts, transfer_texts
from tasks.contracts.near_dup import NearDuplicateSettings
from tasks.core.config import PipelineConfig
from tasks.core.data import load_dataset
from tasks.core.io import staged_dir, write_json
from tasks.core.paths import ArtifactPaths
from tasks.core.runlog import write_run_record
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.core.stamp import build_stamp, model_folder_sha256
from tasks.runtime.long_text import describe
from tasks.training.engine import save_tokenizer, tokens_logits
from tasks.training.modeling import load_classifier, pick_device, precision, torch_logits
from tasks.training.reading import chosen_long_text
from tasks.training.tokens import TokenizedTexts, tokenize, tokenizer_fingerprint

console = Console(stderr=True, soft_wrap=True)
DISTILL_FILE, TRANSFER_ROWS_FILE = "distill.json", "transfer_rows.json"
# distill's keys that judge the student rather than make it (quantize and the gate read them): left out of the
# recipe, the stamp and dvc.yaml's distill params, so a new bound reruns the judging stages but not distillation.
RECIPE_EXCLUDES = ("max_accuracy_drop", "min_agreement")


def recipe(cfg: PipelineConfig) -> dict[str, Any]:
    """distill's params that make the student (every key but RECIPE_EXCLUDES)."""
    return cfg.distill.model_dump(mode="json", exclude=set(RECIPE_EXCLUDES))


@dataclass(frozen=True)
class Rows:
    """Everything the student trains on: labelled training rows first, then transfer rows (label UNLABELLED)."""

    tokens: TokenizedTexts
    labels: np.ndarray        # int64 [n]
    labelled: int             # rows of the training split (windows of long texts included)
    training_texts: int       # texts of the training split they came from


@dataclass(frozen=True)
class Student:
    """The distilled student and what distillation did to it."""

    model: Any
    report: dict[str, Any]
    outcome: DistillOutcome
    teacher_logits_seconds: float


def near_duplicate_rule(cfg: PipelineConfig) -> NearDuplicateSettings:
    """prepare's near-duplicate rule (the split contract's leakage check), seeded like prepare."""
    p = cfg.prepare
    return NearDuplicateSettings(jaccard=p.near_duplicate_jaccard, shingle_words=p.shingle_words,
                                 permutations=p.minhash_permutations, bands=p.lsh_bands, seed=cfg.seed)


def gather_transfer(cfg: PipelineConfig, paths: ArtifactPaths, splits: dict[str, pd.DataFrame]) -> Transfer:
    """distill.transfer's texts, from the data rows of its sources that no prepare split holds (dev and test texts
    and their near duplicates excluded); sources absent from the data lend nothing and are named in the counts."""
    transfer = cfg.distill.transfer
    texts, absent = source_texts(load_dataset(paths.root, cfg.data), cfg.data, transfer.sources)
    every_split = [t for frame in splits.values() for t in frame["text"]]
    held_out = [t for name in ("dev", "test") for t in splits[name]["text"]]
    found = transfer_texts(texts, every_split, held_out, transfer, near_duplicate_rule(cfg), cfg.seed)
    counts = {"sources": list(transfer.sources), "absent_sources": absent, **found.counts}
    if absent:
        console.print(f"distill: transfer sources absent from the data (no texts from them): {', '.join(absent)}")
    return Transfer(texts=found.texts, row_keys=found.row_keys, counts=counts)


def training_rows(tokenizer: Any, train_df: pd.DataFrame, transfer: list[str], cfg: PipelineConfig,
                  paths: ArtifactPaths) -> Rows:
    """The training split tokenised exactly as train reads it (same max_length, long texts as windows when
    train.long_text.train_windows; the token cache train filled), then the transfer texts (heads)."""
    train = cfg.train
    max_windows = train.long_text.max_train_windows if train.long_text.train_windows else None
    tok_hash = tokenizer_fingerprint(tokenizer)
    labelled = tokenize(tokenizer, list(train_df["text"]), train.max_length, paths.token_cache, tok_hash, max_windows)
    labels = labelled.row_labels(train_df["label"].to_numpy()).astype(np.int64)
    if transfer:
        extra = tokenize(tokenizer, transfer, train.max_length, None, tok_hash)  # small: not worth a cache entry
        tokens = concat_tokens(labelled, extra)
        labels = np.concatenate([labels, np.full(len(extra), UNLABELLED, dtype=np.int64)])
    else:
        tokens = labelled
    return Rows(tokens=tokens, labels=labels, labelled=len(labelled), training_texts=len(train_df))


def importance_rows(labelled: int, wanted: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `wanted` labelled row indices, sorted."""
    if labelled <= wanted:
        return np.arange(labelled)
    return np.sort(np.random.default_rng(seed).choice(labelled, size=wanted, replace=False))


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def size_figures(teacher: Any, student: Any) -> dict[str, Any]:
    """Parameters of both models, all and in the encoder layers alone: the embeddings (half of a small BERT's
    weights) cost a lookup, the encoder layers nearly all the compute, so the second ratio is the one speed follows."""
    counts = {name: (parameter_count(model), parameter_count(encoder_layers(model)))
              for name, model in (("teacher", teacher), ("student", student))}
    (teacher_all, teacher_encoder), (student_all, student_encoder) = counts["teacher"], counts["student"]
    return {"params": {"teacher": teacher_all, "student": student_all, "ratio": round(student_all / teacher_all, 4)},
            "encoder_params": {"teacher": teacher_encoder, "student": student_encoder,
                               "ratio": round(student_encoder / teacher_encoder, 4)}}


def distill_student(teacher: Any, rows: Rows, cfg: PipelineConfig, device: torch.device,
                    teacher_logits: np.ndarray | None = None) -> Student:
    """Rank FFN neurons on importance rows, build the pruned student, distill it on every row; with the student's
    KL to the teacher on the importance rows before and after. `teacher_logits`: the teacher's logits on `rows`
    when already computed (a sweep of recipes shares them), else computed here."""
    d = cfg.distill
    tick = time.perf_counter()
    if teacher_logits is None:
        teacher_logits = tokens_logits(teacher, rows.tokens, d.batch_size, device)  # once: the soft targets
    teacher_seconds = time.perf_counter() - tick
    ranked = importance_rows(rows.labelled, d.importance_rows, cfg.seed)
    importance = ffn_importance(teacher, token_batches(rows.tokens, ranked, d.batch_size), d.keep_layers)
    student = build_student(teacher, d.keep_layers, d.ffn_keep, importance).to(device)
    kl_before = mean_kl(teacher_logits[ranked], tokens_logits(student, rows.tokens, d.batch_size, device, ranked))
    console.print(f"distill: student of {len(d.keep_layers)} layers {d.keep_layers} x FFN "
                  f"{student.config.intermediate_size}, {parameter_count(student) / 1e6:.1f}M params; "
                  f"{rows.labelled} training rows + {len(rows.tokens) - rows.labelled} transfer texts; "
                  f"KL to the teacher {kl_before:.4f}")
    outcome = distill_fit(student, rows.tokens, teacher_logits, rows.labels, d, cfg.seed, device,
                          max_grad_norm=cfg.train.max_grad_norm, deterministic=cfg.train.deterministic,
                          console=console)
    kl_after = mean_kl(teacher_logits[ranked], tokens_logits(student, rows.tokens, d.batch_size, device, ranked))
    report = {
        "layers_kept": list(d.keep_layers),
        "layers": {"teacher": teacher.config.num_hidden_layers, "student": student.config.num_hidden_layers},
        "ffn_size": {"teacher": teacher.config.intermediate_size, "student": student.config.intermediate_size},
        **size_figures(teacher, student),
        "rows": {"training_texts": rows.training_texts, "training_rows": rows.labelled,
                 "transfer_texts": len(rows.tokens) - rows.labelled, "importance_rows": len(ranked)},
        "optimizer_steps": outcome.steps,
        "epoch_losses": outcome.epoch_losses,
        # Mean KL(teacher || student), temperature 1, nats, on the importance rows (training rows).
        "kl_to_teacher": {"rows": len(ranked), "before": kl_before, "after": kl_after},
    }
    return Student(model=student, report=report, outcome=outcome, teacher_logits_seconds=teacher_seconds)


def dev_figures(student: Any, teacher: Any, tokenizer: Any, dev_df: pd.DataFrame, rule: dict[str, Any],
                cfg: PipelineConfig, device: torch.device) -> dict[str, Any]:
    """Student and teacher on the dev split, texts read by the chosen long_text rule: accuracy and agreement."""
    texts, labels = list(dev_df["text"]), dev_df["label"].to_numpy()

    def predict(model: Any) -> np.ndarray:
        logits = torch_logits(model, tokenizer, texts, cfg.train.max_length, cfg.distill.batch_size, device,
                              long_text=rule)
        return logits.argmax(axis=1)

    student_pred, teacher_pred = predict(student), predict(teacher)
    return {"rows": len(texts), "long_text": describe(rule),
            "student_accuracy": float(np.mean(student_pred == labels)) if len(texts) else 0.0,
            "teacher_accuracy": float(np.mean(teacher_pred == labels)) if len(texts) else 0.0,
            "agreement": float(np.mean(student_pred == teacher_pred)) if len(texts) else 0.0}


def key_figure(report: dict[str, Any]) -> str:
    """One line: the student's shape and size, and its dev accuracy and agreement against the teacher's."""
    dev, params, layers = report["dev"], report["params"], report["layers"]["student"]
    return (f"student {layers} layer{'' if layers == 1 else 's'} x FFN {report['ffn_size']['student']}, "
            f"{params['student'] / 1e6:.1f}M params ({params['ratio']:.2f}x; encoder "
            f"{report['encoder_params']['ratio']:.2f}x): dev acc {dev['student_accuracy']:.4f} "
            f"vs teacher {dev['teacher_accuracy']:.4f}, agreement {dev['agreement']:.4f}")


# train's and prepare's keys distill reads (dvc.yaml lists them): how training rows are read and cut, and the
# near-duplicate rule that keeps transfer texts away from dev and test.
DISTILL_TRAIN_KEYS = ("max_length", "long_text", "device", "deterministic", "max_grad_norm")
DISTILL_PREPARE_KEYS = ("near_duplicate_jaccard", "shingle_words", "minhash_permutations", "lsh_bands")


def distill_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The params distill's dvc.yaml stage declares: what its stamp records."""
    # Each section dumped on its own, naming the keys it takes (tests/config_reads.py sees which keys are read),
    # in the order of the tuples (the stamp's bytes).
    train = cfg.train.model_dump(mode="json", include=set(DISTILL_TRAIN_KEYS))
    prepare = cfg.prepare.model_dump(mode="json", include=set(DISTILL_PREPARE_KEYS))
    return {"seed": cfg.seed, "data": cfg.data.model_dump(mode="json"), "distill": recipe(cfg),
            "train": {k: train[k] for k in DISTILL_TRAIN_KEYS}, "prepare": {k: prepare[k] for k in DISTILL_PREPARE_KEYS}}


def write_disabled(paths: ArtifactPaths) -> StageResult:
    """distill.enabled false: a record saying so and no student (quantize's ladder is then the teacher's alone)."""
    result = StageResult(stage="distill", key_figure="off (distill.enabled: false): no student", enabled=False)
    with staged_dir(paths.stage_dir("distill")) as out:
        write_json(out / DISTILL_FILE, {"enabled": False})
        return write_result(out, result)


@stage_task("distill")
def distill(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Prune the trained model into a student and distill it; save it as a plain HF folder + distill.json."""
    started = time.perf_counter()
    if not cfg.distill.enabled:
        return write_disabled(paths)
    device = pick_device(cfg.train.device)
    teacher, tokenizer = load_classifier(paths.model_dir, device)
    splits = {name: pd.read_parquet(paths.split(name)) for name in ("train", "dev", "test")}
    transfer = gather_transfer(cfg, paths, splits)
    console.print(f"distill: {transfer.counts['texts']} transfer texts from {transfer.counts['rows_sampled']} rows "
                  f"of {', '.join(cfg.distill.transfer.sources) or 'no source'} in no split")
    rows = training_rows(tokenizer, splits["train"], transfer.texts, cfg, paths)
    student = distill_student(teacher, rows, cfg, device)
    rule = chosen_long_text(paths)
    report = {"enabled": True, "recipe": recipe(cfg), **student.report, "transfer": transfer.counts,
              "dev": dev_figures(student.model, teacher, tokenizer, splits["dev"], rule, cfg, device)}
    result = StageResult(stage="distill", key_figure=key_figure(report), enabled=True, dev=report["dev"],
                         params=report["params"], encoder_params=report["encoder_params"])
    console.print(f"distill: {result.key_figure}")
    with staged_dir(paths.stage_dir("distill")) as out:
        student.model.save_pretrained(out / paths.student_dir.name)
        save_tokenizer(tokenizer, out / paths.student_dir.name)
        write_json(out / DISTILL_FILE, report)
        write_json(out / TRANSFER_ROWS_FILE, {
            "key": "tasks.judging.compare.row_keys (normalised text, sha256, 16 hex)",
            "sources": list(cfg.distill.transfer.sources), "rows": transfer.row_keys})
        write_json(out / "stamp.json", build_stamp(paths, distill_params(cfg), paths.root / cfg.data.path, {
            "stage": "distill", "teacher_sha256": model_folder_sha256(paths.model_dir),
            "device": device.type, "precision": precision(device)}))
        write_result(out, result)
    outcome = student.outcome
    write_run_record(paths, "distill", {
        "seconds": round(time.perf_counter() - started, 1),
        "teacher_logits_seconds": round(student.teacher_logits_seconds, 1),
        "train_seconds": round(outcome.train_seconds, 1),
        "samples_per_second": round(outcome.samples_seen / max(outcome.train_seconds, 1e-9), 1),
        "device": str(device),
    })
    return result
