"""train: fine-tune a Hugging Face sequence classifier: resumable, reproducible, single- or multi-process."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tasks.training.engine import adamw_with_warmup, save_tokenizer, seed_everything, tokens_logits
from tasks.training.checkpoint import (load_latest, remove_runs, restore_rng_states, rng_states, run_fingerprint,
                                       save_checkpoint)
from tasks.core.config import PipelineConfig, TrainConfig
from tasks.core.io import file_sha256, staged_dir, write_json
from tasks.training.loader import StepBatches, epoch_steps, step_loader
from tasks.training.memory import fit_within_memory, release_device_memory
from tasks.training.lora import add_lora, merge_lora, trainable_share
from tasks.core.metrics import classification_metrics, softmax
from tasks.core.base_model import resolve_base_model
from tasks.training.modeling import (DeviceMismatchError, bf16_enabled, choose_device, deterministic_algorithms,
                                     precision, quiet_transformers, require_safetensors)
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import StageResult, stage_task, write_result
from tasks.core.runlog import write_run_record
from tasks.core.stamp import build_stamp, portable_provenance
from tasks.training.reading import choose_long_text, summary, write_long_text
from tasks.training.tokens import TokenizedTexts, prune_token_cache, tokenize, tokenizer_fingerprint
from tasks.training.tracking import LiveCurves, PrefectProgress, append_epoch_log, copy_curves, live_dir_note

console = Console(stderr=True, soft_wrap=True)
LOG_EVERY_FRACTION = 0.1  # without a terminal (dvc repro, CI logs), print a line every 10% of steps
# train keys that do not change the result: editing them after a crash must not lose the checkpoints.
HOUSEKEEPING_KEYS = {"checkpoint_every_steps", "keep_checkpoints", "dataloader_workers", "token_cache_entries"}
# train.long_text keys read only after training (choosing the reading rule): they do not change the weights either.
AFTER_TRAINING_KEYS = {"candidates", "min_gain_se"}


@dataclass
class TrainState:
    """Where a run stands: everything besides weights, optimizer and RNG that a resume needs."""

    epoch: int = 1                 # the epoch in progress (1-based)
    step_in_epoch: int = 0         # optimizer steps done in it: the sampler position
    global_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)    # per optimizer step: step, loss, lr
    history: list[dict[str, Any]] = field(default_factory=list)    # per epoch: losses and dev metrics
    best_epoch: int = 0
    best_dev_accuracy: float = -1.0
    stale_epochs: int = 0
    stopped: bool = False
    samples_seen: int = 0          # all processes together
    train_seconds: float = 0.0     # inside training steps (data, forward, backward, update); no dev evaluation


@dataclass
class TrainOutcome:
    """Best weights (CPU tensors) and what happened each step and epoch."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_dev_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    samples_seen: int = 0
    train_seconds: float = 0.0
    resumed_from: str | None = None
    world_size: int = 1
    tokens_keys: dict[str, str] = field(default_factory=dict)
    # Training texts, rows trained on, texts cut into windows (train.long_text.train_windows) and their windows.
    train_rows: dict[str, int] = field(default_factory=dict)


def build_model(base: str, label_names: list[str], seed: int) -> tuple[Any, Any]:
    """Pretrained encoder with a fresh, seeded classification head for our labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    require_safetensors(base)
    seed_everything(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        dtype=torch.float32,  # fp32 master weights (bf16 only inside autocast), whatever dtype the folder stores
        use_safetensors=True,  # never pickled weights: a .bin file can run code when loaded
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    return model, tokenizer


def launched() -> bool:
    """True under `accelerate launch` / torchrun with several processes (their process group is live)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(device: torch.device) -> Any:
    """The process group of `accelerate launch` (or a single process) on `device`; we do autocast ourselves."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    live = PartialState._shared_state.get("device")
    if live is not None and live.type != device.type and not launched():
        # accelerate keeps one state per process: without a reset a CPU run after a CUDA one raises, and a
        # CUDA run after a CPU one silently stays on the CPU.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    if accelerator.device.type != device.type:
        raise DeviceMismatchError(f"asked to train on {device} but accelerate placed this process on "
                                  f"{accelerator.device} (a launcher's settings, or CUDA not usable here)")
    return accelerator


def main_process_value(accelerator: Any, value: Any) -> Any:
    """`value` as the main process has it, on every process: decisions that stop the loop must agree under DDP."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def make_optimizer(model: Any, cfg: TrainConfig, total_steps: int, device: torch.device) -> tuple[Any, Any]:
    """AdamW over trainable weights (no decay on biases and LayerNorm), linear warm-up then decay to zero."""
    return adamw_with_warmup(model, cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio, total_steps, device)


def evaluate_dev(model: Any, tokens: TokenizedTexts, labels: np.ndarray, cfg: TrainConfig, label_names: list[str],
                 device: torch.device) -> dict[str, float]:
    probs = softmax(tokens_logits(model, tokens, cfg.eval_batch_size, device))
    metrics = classification_metrics(labels, probs, label_names)
    return {"dev_accuracy": float(metrics["accuracy"]), "dev_macro_f1": float(metrics["macro_f1"])}


def cpu_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def optimizer_step(runner: Any, micro_batches: list, accelerator: Any, trainable: list[torch.Tensor], optimizer: Any,
                   scheduler: Any, max_grad_norm: float, device: torch.device) -> float:
    """One optimizer step over a step's micro-batches (gradients accumulated); returns the step's mean loss.

    Each micro-batch's mean loss is weighted by its share of the step's rows: the step's gradient is that of
    the mean over all its rows however they are cut (micro-batches of unequal size included).
    """
    step_loss = torch.zeros((), device=device)
    step_rows = sum(len(targets) for _, targets in micro_batches)
    for i, (inputs, targets) in enumerate(micro_batches):
        share = len(targets) / step_rows
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        # Under DDP, gradients are all-reduced on the last micro-batch of a step only.
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(runner):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
                loss = runner(**inputs, labels=targets.to(device, non_blocking=True)).loss
            (loss * share).backward()
        step_loss += loss.detach() * share
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(step_loss.item())  # one device sync per step, not per micro-batch


def fit(model: Any, tokenizer: Any, train_df: pd.DataFrame, dev_df: pd.DataFrame, cfg: TrainConfig,
        label_names: list[str], seed: int, device: torch.device, *, checkpoint_dir: Path | None = None,
        token_cache: Path | None = None, accelerator: Any = None, live_dir: Path | None = None) -> TrainOutcome:
    """Train for cfg.epochs (or until dev accuracy stalls), resuming from checkpoint_dir; keep the best epoch.

    Under `accelerate launch` every process trains on its shard of each step's batches (DDP averages the
    gradients) and only the main process writes checkpoints, the dvclive curves in live_dir (step by step)
    and the Prefect progress artifacts (inside a Prefect run).
    """
    accelerator = accelerator or make_accelerator(device)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    tok_hash = tokenizer_fingerprint(tokenizer)
    max_windows = cfg.long_text.max_train_windows if cfg.long_text.train_windows else None  # None: heads only
    train_tokens = tokenize(tokenizer, list(train_df["text"]), cfg.max_length, token_cache, tok_hash, max_windows)
    # Dev during training (best epoch, early stopping) reads heads: cheap, and the same for every epoch. The
    # reading rule is chosen on dev after training (tasks/training/reading.py).
    dev_tokens = tokenize(tokenizer, list(dev_df["text"]), cfg.max_length, token_cache, tok_hash)
    if token_cache is not None and accelerator.is_main_process:  # the two keys just used are the newest
        prune_token_cache(token_cache, cfg.token_cache_entries)
    labels = torch.tensor(train_tokens.row_labels(train_df["label"].to_numpy()), dtype=torch.long)
    if accelerator.is_main_process and train_tokens.windowed_texts:
        console.print(f"train: {train_tokens.windowed_texts} training texts longer than {cfg.max_length} tokens "
                      f"read as {train_tokens.windowed_rows} windows ({len(train_tokens)} rows in all)")
    steps_per_epoch = len(epoch_steps(train_tokens.lengths, cfg, seed, 1, world, rank))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_df)} training rows make no step for {world} processes")
    total_steps = steps_per_epoch * cfg.epochs
    model.to(device)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps, device)

    state, best_state, resumed_from = TrainState(), cpu_state(model), None
    found = load_latest(checkpoint_dir) if checkpoint_dir is not None else None
    if found is not None:
        resumed_from, saved = str(found[0]), found[1]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng_note = restore_rng_states(saved["rng"])
        state, best_state = TrainState(**saved["state"]), saved["best_state"]
        console.print(f"train: resumed from {found[0]} (epoch {state.epoch}, step {state.global_step}/{total_steps})")
        if rng_note:
            console.print(f"train: {rng_note}")
    if rank:  # other dropout masks on every process (and after a resume: only the main one's RNG is saved)
        torch.manual_seed(seed + 1000 * rank + state.global_step)

    def checkpoint() -> None:
        if checkpoint_dir is not None and accelerator.is_main_process:
            save_checkpoint(checkpoint_dir, state.global_step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_states(), "state": asdict(state),
                "best_state": best_state, "fingerprint": checkpoint_dir.name}, cfg.keep_checkpoints)

    runner = accelerator.prepare_model(model)  # DDP-wrapped under accelerate launch; `model` itself otherwise
    if cfg.compile:
        runner = torch.compile(runner, dynamic=True)  # dynamic: every batch has its own padded length
    trainable = [p for p in model.parameters() if p.requires_grad]
    show = accelerator.is_main_process
    curves = LiveCurves(live_dir, state.steps, state.history) if live_dir is not None and show else None
    published = PrefectProgress(total_steps, state.global_step, enabled=show)
    with deterministic_algorithms(cfg.deterministic, device), \
            Progress(TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not show) as progress:
        log_every = max(1, int(total_steps * LOG_EVERY_FRACTION))
        bar = progress.add_task("", total=total_steps, completed=state.global_step)
        while state.epoch <= cfg.epochs and not state.stopped:
            steps = epoch_steps(train_tokens.lengths, cfg, seed, state.epoch, world, rank)
            loader = step_loader(StepBatches(train_tokens, labels, steps[state.step_in_epoch:]), cfg, device)
            runner.train()
            tick = time.perf_counter()
            for micro_batches in loader:
                lr = scheduler.get_last_lr()[0]
                loss_value = optimizer_step(runner, micro_batches, accelerator, trainable, optimizer, scheduler,
                                            cfg.max_grad_norm, device)
                state.global_step += 1
                state.step_in_epoch += 1
                state.epoch_losses.append(loss_value)
                state.steps.append({"step": state.global_step, "loss": loss_value, "lr": lr})
                state.samples_seen += sum(len(t) for _, t in micro_batches) * world
                state.train_seconds += time.perf_counter() - tick
                if curves is not None:
                    curves.log_step(state.steps[-1])
                published.step(state.global_step)
                status = f"epoch {state.epoch}/{cfg.epochs} loss {np.mean(state.epoch_losses[-20:]):.4f}"
                progress.update(bar, completed=state.global_step, description=status)
                if show and not console.is_terminal and state.global_step % log_every == 0:
                    progress.console.print(f"train: step {state.global_step}/{total_steps} {status}")
                if state.global_step % cfg.checkpoint_every_steps == 0 and state.step_in_epoch < len(steps):
                    checkpoint()
                tick = time.perf_counter()
            best_state = end_epoch(state, model, best_state, dev_tokens, dev_df, cfg, label_names, accelerator,
                                   progress.console if show else None)
            if curves is not None:
                curves.log_epoch(state.history[-1])
            published.epoch(state.history)
            if show:
                append_epoch_log(state.history[-1])
            checkpoint()
    if curves is not None:
        curves.finish(state.best_dev_accuracy, state.best_epoch)
    published.finish()
    return TrainOutcome(best_state=best_state, best_epoch=state.best_epoch, best_dev_accuracy=state.best_dev_accuracy,
                        history=state.history, steps=state.steps, samples_seen=state.samples_seen,
                        train_seconds=state.train_seconds, resumed_from=resumed_from, world_size=world,
                        tokens_keys={"train": train_tokens.key, "dev": dev_tokens.key},
                        train_rows={"texts": len(train_df), "rows": len(train_tokens),
                                    "windowed_texts": train_tokens.windowed_texts,
                                    "windows": train_tokens.windowed_rows})


def end_epoch(state: TrainState, model: Any, best_state: dict[str, torch.Tensor], dev_tokens: TokenizedTexts,
              dev_df: pd.DataFrame, cfg: TrainConfig, label_names: list[str], accelerator: Any,
              out: Console | None) -> dict[str, torch.Tensor]:
    """Evaluate on dev, record the epoch, keep the best weights, decide early stopping; returns the best weights.

    Every process decides from the main process's dev figures: if each used its own and they ever differed,
    one would stop while the others waited for it forever in the next step's gradient all-reduce.
    """
    dev = evaluate_dev(model, dev_tokens, dev_df["label"].to_numpy(), cfg, label_names, accelerator.device)
    dev = main_process_value(accelerator, dev)
    train_loss = float(np.mean(state.epoch_losses))
    state.history.append({"epoch": state.epoch, "step": state.global_step, "train_loss": train_loss, **dev})
    if out is not None:
        out.print(f"epoch {state.epoch}: train loss {train_loss:.4f}, dev accuracy {dev['dev_accuracy']:.4f}, "
                  f"dev macro-F1 {dev['dev_macro_f1']:.4f}")
    if dev["dev_accuracy"] > state.best_dev_accuracy:
        best_state = cpu_state(model)
        state.best_epoch, state.best_dev_accuracy, state.stale_epochs = state.epoch, dev["dev_accuracy"], 0
    else:
        state.stale_epochs += 1
        if state.stale_epochs > cfg.early_stopping_patience:
            state.stopped = True
            if out is not None:
                out.print(f"early stop: dev accuracy has not improved for {state.stale_epochs} epochs")
    state.epoch, state.step_in_epoch, state.epoch_losses = state.epoch + 1, 0, []
    return best_state


def choose_reading(model: Any, tokenizer: Any, dev_df: pd.DataFrame, cfg: TrainConfig,
                   device: torch.device) -> tuple[dict[str, Any], float]:
    """long_text.json's report (every train.long_text candidate on dev, the choice), logged; and its seconds."""
    tick = time.perf_counter()
    report = choose_long_text(model, tokenizer, dev_df, cfg, device)
    for candidate in report["candidates"]:
        on_long = candidate["dev_long_accuracy"]
        console.print(f"train: long texts by {candidate['described']}: dev accuracy {candidate['dev_accuracy']:.4f}, "
                      f"on long rows {'-' if on_long is None else f'{on_long:.4f}'}"
                      f"{'  <- chosen' if candidate['chosen'] else ''}")
    console.print(f"train: {summary(report)}")
    return report, time.perf_counter() - tick


def drop_checkpoints(finished: Path, root: Path) -> None:
    """Delete a completed run's checkpoints and those of every other configuration (abandoned), naming the latter."""
    for folder, size in remove_runs(finished.parent):
        if folder != finished:
            console.print(f"train: removed checkpoints of an abandoned configuration: "
                          f"{folder.relative_to(root)} ({size / 1e6:.0f} MB)")


def run_identity(cfg: PipelineConfig, paths: ArtifactPaths, provenance: dict[str, Any], world: int,
                 device: torch.device) -> dict[str, Any]:
    """Everything that determines the run's result: its checkpoints resume only into an identical run.

    The device type and precision actually used, not train.device (`auto` is CPU fp32 on one host and
    CUDA bf16 on another); train.deterministic stays in too (it changes CUDA results).
    """
    train = cfg.train.model_dump(mode="json", exclude={**dict.fromkeys(HOUSEKEEPING_KEYS, True),
                                                       "long_text": AFTER_TRAINING_KEYS})
    return {"train": train, "seed": cfg.seed, "labels": cfg.data.label_names,
            "data": {s: file_sha256(paths.split(s)) for s in ("train", "dev")}, "base_model": provenance,
            "world_size": world, "device": {"type": device.type, "precision": precision(device)}}


def train_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The params train's dvc.yaml stage declares (seed, data.label_names, train): all the stamp records, since a
    setting of a later stage would make the stamp differ from a run that DVC considers the same."""
    return {"seed": cfg.seed, "data": cfg.data.model_dump(mode="json", include={"label_names"}),
            "train": cfg.train.model_dump(mode="json")}


@dataclass
class TrainAttempt:
    """One training attempt at one config: the model (best weights not loaded yet) and how it went."""

    model: Any
    tokenizer: Any
    outcome: TrainOutcome
    identity: dict[str, Any]
    checkpoints: Path
    trained_share: float


def train_once(cfg: PipelineConfig, paths: ArtifactPaths, base: str, provenance: dict[str, Any], accelerator: Any,
               train_df: pd.DataFrame, dev_df: pd.DataFrame) -> TrainAttempt:
    """Build the seeded model and fit it with cfg, resuming this exact config's checkpoints when there are some."""
    model, tokenizer = build_model(base, cfg.data.label_names, cfg.seed)
    if cfg.train.method == "lora":
        model = add_lora(model, cfg.train.lora)
    trained_share = trainable_share(model)
    identity = run_identity(cfg, paths, provenance, accelerator.num_processes, accelerator.device)
    checkpoints = paths.checkpoints("train", run_fingerprint(identity))
    outcome = fit(model, tokenizer, train_df, dev_df, cfg.train, cfg.data.label_names, cfg.seed, accelerator.device,
                  checkpoint_dir=checkpoints, token_cache=paths.token_cache, accelerator=accelerator,
                  live_dir=paths.train_live_in_progress)
    return TrainAttempt(model, tokenizer, outcome, identity, checkpoints, trained_share)


@stage_task("train")
def train(cfg: PipelineConfig, paths: ArtifactPaths) -> StageResult:
    """Fine-tune train.base_model on the prepared splits; save the best epoch as a plain HF folder + stamp."""
    started = time.perf_counter()
    base, provenance = resolve_base_model(cfg.train.base_model, paths.root)
    provenance = portable_provenance(provenance, cfg.train.base_model)  # stamp and fingerprint: no paths of this machine
    requested, device_note = choose_device(cfg.train.device)
    accelerator = make_accelerator(requested)
    device, main = accelerator.device, accelerator.is_main_process
    if main:
        console.print(f"train: device {device_note}")
        console.print(f"train: {provenance} on {device} x {accelerator.num_processes} process(es)"
                      f"{' (bf16)' if bf16_enabled(device) else ''}, method {cfg.train.method}")
    train_df, dev_df = pd.read_parquet(paths.split("train")), pd.read_parquet(paths.split("dev"))
    live = paths.train_live_in_progress
    if main:
        console.print(f"train: curves while it runs: {live_dir_note(live, paths.root)}")

    def release() -> None:
        accelerator.free_memory()  # drops the failed attempt's model and optimizer that accelerate holds
        release_device_memory()

    # On CUDA out-of-memory: again with smaller micro-batches, same effective batch (tasks/training/memory.py).
    fitted = fit_within_memory(lambda run_cfg: train_once(run_cfg, paths, base, provenance, accelerator,
                                                          train_df, dev_df),
                               cfg, can_retry=accelerator.num_processes == 1, release=release,
                               say=console.print if main else lambda _: None)
    used, done = fitted.cfg.train, fitted.result
    model, tokenizer, outcome, identity, checkpoints = (done.model, done.tokenizer, done.outcome, done.identity,
                                                        done.checkpoints)
    model.load_state_dict(outcome.best_state)
    model = merge_lora(model)  # later stages load a plain transformers model
    # How long texts are read: chosen on dev with the final model (the main process; the others wait below).
    long_text, long_text_seconds = choose_reading(model, tokenizer, dev_df, cfg.train, device) if main else ({}, 0.0)
    key = f"dev accuracy {outcome.best_dev_accuracy:.4f} (epoch {outcome.best_epoch})"
    if long_text:
        key += f"; long texts: {long_text['described']}"
    result = StageResult(stage="train", key_figure=key, best_dev_accuracy=outcome.best_dev_accuracy,
                         train_rows=outcome.train_rows, long_text=long_text.get("chosen"))
    seconds = time.perf_counter() - started
    if main:
        with staged_dir(paths.stage_dir("train")) as out:
            model.save_pretrained(out / "model")
            save_tokenizer(tokenizer, out / "model")
            write_json(out / "history.json", outcome.history)
            write_long_text(out, long_text)
            copy_curves(live, out / paths.train_live.name)
            write_json(out / "stamp.json", build_stamp(paths, train_params(cfg), paths.root / cfg.data.path, {
                "stage": "train",
                "base_model": provenance,
                "device": str(device),
                "bf16": bf16_enabled(device),
                "method": cfg.train.method,
                "trainable_share": round(done.trained_share, 6),
                # What was used: train.batch_size and gradient_accumulation_steps of params.yaml (under
                # "config", as dvc.lock records them) unless the out-of-memory fallback cut the micro-batches.
                "per_device_batch_size": used.batch_size,
                "gradient_accumulation_steps": used.gradient_accumulation_steps,
                "memory_fallback": fitted.fallbacks,
                "world_size": outcome.world_size,
                "effective_batch_size": used.batch_size * used.gradient_accumulation_steps * outcome.world_size,
                "run_fingerprint": checkpoints.name,
                "run_identity": identity,
                "tokens_cache_keys": outcome.tokens_keys,
                "train_rows": outcome.train_rows,
                "best_epoch": outcome.best_epoch,
                "optimizer_steps": len(outcome.steps),
            }))
            write_result(out, result)
        # Times and this machine's paths: outside the tracked outputs, or every run would change dvc.lock.
        write_run_record(paths, "train", {
            "seconds": round(seconds, 1),
            "samples_per_second": round(outcome.samples_seen / max(outcome.train_seconds, 1e-9), 1),
            "long_text_seconds": round(long_text_seconds, 1),
            "resumed_from": outcome.resumed_from,
            "memory_fallback": fitted.fallbacks,
            "memory_fallback_errors": fitted.errors,
            "base_model_folder": str(base),
            "data_path": str((paths.root / cfg.data.path).resolve()),
        })
        drop_checkpoints(checkpoints, paths.root)  # the run is complete: nothing left to resume
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group of a launch (no-op for a single process)
    return result
