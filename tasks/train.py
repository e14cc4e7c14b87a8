"""train: fine-tune a Hugging Face sequence classifier with AdamW, warm-up and early stopping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tasks.batching import shuffled_length_batches
from tasks.config import PipelineConfig, TrainConfig
from tasks.io import staged_dir, write_json
from tasks.metrics import classification_metrics, softmax
from tasks.modeling import bf16_enabled, pick_device, quiet_transformers, resolve_base_model, torch_logits
from tasks.paths import ArtifactPaths
from tasks.stage import StageResult, build_stamp, stage_task, write_result

console = Console(stderr=True, soft_wrap=True)
LOG_EVERY_FRACTION = 0.1  # without a terminal (dvc repro, CI logs), print a line every 10% of steps


@dataclass
class TrainOutcome:
    """Best weights (CPU tensors) and what happened each epoch."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_dev_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_seen: int = 0


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(base: str, label_names: list[str], seed: int) -> tuple[Any, Any]:
    """Pretrained encoder with a fresh, seeded classification head for our labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    seed_everything(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    return model, tokenizer


def make_optimizer(model: Any, cfg: TrainConfig, total_steps: int, device: torch.device) -> tuple[Any, Any]:
    """AdamW (no decay on biases and LayerNorm) with linear warm-up then linear decay to zero."""
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        fused=device.type == "cuda",
    )
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def fit(model: Any, tokenizer: Any, train_df: pd.DataFrame, dev_df: pd.DataFrame, cfg: TrainConfig,
        label_names: list[str], seed: int, device: torch.device) -> TrainOutcome:
    """Train for cfg.epochs (or until dev accuracy stops improving); keep the best epoch's weights."""
    encoded = tokenizer(list(train_df["text"]), truncation=True, max_length=cfg.max_length)
    features = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(train_df))]
    labels = torch.tensor(train_df["label"].to_numpy(), dtype=torch.long)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(features) // cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch * cfg.epochs, device)
    model.to(device)

    outcome = TrainOutcome(best_state={}, best_epoch=0, best_dev_accuracy=-1.0)
    stale_epochs = 0
    with Progress(TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        total_steps = steps_per_epoch * cfg.epochs
        log_every = max(1, int(total_steps * LOG_EVERY_FRACTION))
        bar = progress.add_task("", total=total_steps)
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            losses = []
            for batch_idx in shuffled_length_batches(lengths, cfg.batch_size, rng):
                batch = tokenizer.pad([features[i] for i in batch_idx], return_tensors="pt").to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
                    loss = model(**batch, labels=labels[batch_idx].to(device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                outcome.samples_seen += len(batch_idx)
                status = f"epoch {epoch}/{cfg.epochs} loss {np.mean(losses[-20:]):.4f}"
                progress.update(bar, advance=1, description=status)
                done = int(progress.tasks[0].completed)
                if not console.is_terminal and done % log_every == 0:
                    progress.console.print(f"train: step {done}/{total_steps} {status}")
            dev = evaluate_dev(model, tokenizer, dev_df, cfg, label_names, device)
            outcome.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **dev})
            progress.console.print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, "
                                   f"dev accuracy {dev['dev_accuracy']:.4f}, dev macro-F1 {dev['dev_macro_f1']:.4f}")
            if dev["dev_accuracy"] > outcome.best_dev_accuracy:
                outcome.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                outcome.best_epoch, outcome.best_dev_accuracy = epoch, dev["dev_accuracy"]
                stale_epochs = 0
            else:
                stale_epochs += 1
                if stale_epochs > cfg.early_stopping_patience:
                    progress.console.print(f"early stop: dev accuracy has not improved for {stale_epochs} epochs")
                    break
    return outcome


def evaluate_dev(model: Any, tokenizer: Any, dev_df: pd.DataFrame, cfg: TrainConfig, label_names: list[str],
                 device: torch.device) -> dict[str, float]:
    logits = torch_logits(model, tokenizer, list(dev_df["text"]), cfg.max_length, cfg.eval_batch_size, device)
    metrics = classification_metrics(dev_df["label"].to_numpy(), softmax(logits), label_names)
    return {"dev_accuracy": metrics["accuracy"], "dev_macro_f1": metrics["macro_f1"]}


@stage_task("train", retries=1)
def train(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Fine-tune train.base_model on the prepared splits; save the best epoch as an HF folder + stamp."""
    started = time.perf_counter()
    base, provenance = resolve_base_model(cfg.train.base_model, paths.root)
    device = pick_device(cfg.train.device)
    console.print(f"train: {provenance} on {device}{' (bf16)' if bf16_enabled(device) else ''}")
    model, tokenizer = build_model(base, cfg.data.label_names, cfg.seed)
    train_df, dev_df = pd.read_parquet(paths.split("train")), pd.read_parquet(paths.split("dev"))
    outcome = fit(model, tokenizer, train_df, dev_df, cfg.train, cfg.data.label_names, cfg.seed, device)
    model.load_state_dict(outcome.best_state)
    seconds = time.perf_counter() - started
    key = f"dev accuracy {outcome.best_dev_accuracy:.4f} (epoch {outcome.best_epoch})"
    with staged_dir(paths.stage_dir("train")) as out:
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        write_json(out / "history.json", outcome.history)
        write_json(out / "stamp.json", build_stamp(paths, cfg.dump(), paths.root / cfg.data.path, {
            "stage": "train",
            "base_model": provenance,
            "device": str(device),
            "bf16": bf16_enabled(device),
            "best_epoch": outcome.best_epoch,
            "train_seconds": round(seconds, 1),
            "samples_per_second": round(outcome.samples_seen / seconds, 1),
        }))
        return write_result(out, StageResult(stage="train", key_figure=key,
                                             best_dev_accuracy=outcome.best_dev_accuracy))
