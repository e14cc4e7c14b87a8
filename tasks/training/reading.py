"""The long-text reading rule, chosen on data: after training, every train.long_text candidate reads the dev split
(never test) with the trained model; the cheapest holds unless a costlier one is clearly better. The choice and
every candidate's figures go to artifacts/train/long_text.json; export copies the rule into serving.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.core.config import TrainConfig
from tasks.core.io import read_json, write_json
from tasks.core.paths import ArtifactPaths
from tasks.judging.stats import paired_accuracy_se
from tasks.runtime.long_text import (HEAD, Reading, Wrapper, combine, content_ids, describe, normalise, padded,
                                     read_ids, window_cap)
from tasks.training.modeling import bf16_enabled
from tasks.training.tokens import fast_backend

LONG_TEXT_FILE = "long_text.json"  # in artifacts/train/
# windows -> [n_windows, classes] float32 logits, one model call.
WindowRunner = Callable[[list[list[int]]], np.ndarray]


def long_text_path(paths: ArtifactPaths) -> Path:
    return paths.stage_dir("train") / LONG_TEXT_FILE


def chosen_long_text(paths: ArtifactPaths) -> dict[str, Any]:
    """The rule the train stage chose (a dict, checked); head for a run trained before rules were chosen."""
    path = long_text_path(paths)
    return normalise(read_json(path)["chosen"]) if path.is_file() else dict(HEAD)


def window_set(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What decides a rule's windows (not how their logits are combined): rules that share it share one forward.
    A window rule's cap on windows per text is part of it (absent reads as MAX_WINDOWS, the same windows)."""
    cap = window_cap(rule) if rule["rule"] == "window" else None
    return rule["rule"], rule.get("head_tokens"), rule.get("stride"), cap


def window_groups(reading: Reading, max_windows: int) -> list[np.ndarray]:
    """Text indices per model call, texts in order of the tokens they read: as many texts as fit in max_windows
    windows (at least one text; a text's windows are never split across calls). PyTorch logits do not depend on
    batch mates, so calls are sized for memory: a batch of long texts holds many windows."""
    counts = reading.window_counts()
    order = np.argsort(np.asarray(reading.window_tokens()), kind="stable")
    groups: list[list[int]] = [[]]
    held = 0
    for i in order:
        if groups[-1] and held + counts[i] > max_windows:
            groups.append([])
            held = 0
        groups[-1].append(int(i))
        held += counts[i]
    return [np.asarray(g, dtype=np.int64) for g in groups if g]


def reading_window_logits(reading: Reading, run: WindowRunner, max_windows: int, classes: int) -> np.ndarray:
    """[n_windows, classes] logits of every window of a reading."""
    rows = reading.rows()
    out = np.zeros((len(reading.windows), classes), dtype=np.float32)
    for group in window_groups(reading, max_windows):
        picked = np.concatenate([rows[i] for i in group])
        out[picked] = run([reading.windows[r] for r in picked])
    return out


def candidate_logits(contents: list[list[int]], rules: list[dict[str, Any]], max_length: int, wrapper: Wrapper,
                     run: WindowRunner, max_windows: int, classes: int) -> list[np.ndarray]:
    """[n_texts, classes] logits of texts (content ids) under each rule, one forward per distinct window set.
    Texts within one window read alike under every rule: they are run once."""
    budget = max_length - wrapper.specials
    long = np.asarray([len(c) > budget for c in contents], dtype=bool)
    short_rows, long_rows = np.flatnonzero(~long), np.flatnonzero(long)
    base = np.zeros((len(contents), classes), dtype=np.float32)
    if len(short_rows):
        short = read_ids([contents[i] for i in short_rows], HEAD, max_length, wrapper)
        base[short_rows] = combine(reading_window_logits(short, run, max_windows, classes), short.owners,
                                   len(short_rows), HEAD)
    window_logits: dict[tuple[Any, ...], tuple[Reading, np.ndarray]] = {}
    out = []
    for rule in rules:
        logits = base.copy()
        if len(long_rows):
            key = window_set(rule)
            if key not in window_logits:
                reading = read_ids([contents[i] for i in long_rows], rule, max_length, wrapper)
                window_logits[key] = reading, reading_window_logits(reading, run, max_windows, classes)
            reading, per_window = window_logits[key]
            logits[long_rows] = combine(per_window, reading.owners, len(long_rows), rule)
        out.append(logits)
    return out


def choose(correct: list[np.ndarray], min_gain_se: float) -> tuple[int, list[dict[str, Any]]]:
    """Walk candidates cheapest first (0/1 per-row correctness on the same rows): the first is the choice; a later
    one replaces the choice so far when its accuracy exceeds it by more than min_gain_se standard errors of the
    paired difference (an SE of 0 needs a strictly positive gain). Returns the chosen index and, per candidate,
    its comparison with the choice it met."""
    chosen = 0
    steps: list[dict[str, Any]] = [{"compared_with": None, "gain_vs_chosen": 0.0, "gain_se": 0.0,
                                    "replaced_choice": False}]
    for i in range(1, len(correct)):
        gain = _accuracy(correct[i]) - _accuracy(correct[chosen])
        se = paired_accuracy_se(correct[i], correct[chosen])
        better = gain > min_gain_se * se
        steps.append({"compared_with": chosen, "gain_vs_chosen": gain, "gain_se": se, "replaced_choice": better})
        if better:
            chosen = i
    return chosen, steps


def _accuracy(correct: np.ndarray) -> float:
    return float(np.mean(correct)) if len(correct) else 0.0


def long_text_report(rules: list[dict[str, Any]], logits: list[np.ndarray], labels: np.ndarray, long: np.ndarray,
                     windows: list[int], min_gain_se: float) -> dict[str, Any]:
    """long_text.json: the chosen rule and every candidate's dev figures (deterministic: no timings)."""
    correct = [np.asarray(lg.argmax(axis=1) == labels) for lg in logits]
    chosen, steps = choose(correct, min_gain_se)
    candidates = []
    for i, (rule, right, step) in enumerate(zip(rules, correct, steps)):
        met = step["compared_with"]
        candidates.append({
            "rule": rule,
            "described": describe(rule),
            "dev_accuracy": _accuracy(right),
            "dev_long_accuracy": _accuracy(right[long]) if long.any() else None,
            "long_rows": int(long.sum()),
            "windows": windows[i],  # model inputs it reads on dev (its cost)
            "compared_with": None if met is None else describe(rules[met]),
            "gain_vs_chosen": step["gain_vs_chosen"],
            "gain_se": step["gain_se"],
            "replaced_choice": step["replaced_choice"],
            "chosen": i == chosen,
        })
    return {"chosen": rules[chosen], "described": describe(rules[chosen]), "dev_rows": len(labels),
            "long_rows": int(long.sum()), "min_gain_se": min_gain_se, "candidates": candidates}


def windows_read(contents: list[list[int]], rule: dict[str, Any], max_length: int, wrapper: Wrapper) -> int:
    return len(read_ids(contents, rule, max_length, wrapper).windows)


def torch_window_runner(model: Any, input_names: list[str], pad_id: int, type_id: int,
                        device: torch.device) -> WindowRunner:
    """A WindowRunner on a PyTorch classifier (bf16 autocast where the GPU has it, as in training)."""
    model.eval()

    @torch.inference_mode()
    def run(windows: list[list[int]]) -> np.ndarray:
        fields = padded(windows, pad_id, type_id)
        inputs = {name: torch.from_numpy(fields[name]).to(device) for name in input_names}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device)):
            return model(**inputs).logits.float().cpu().numpy()

    return run


def choose_long_text(model: Any, tokenizer: Any, dev_df: pd.DataFrame, cfg: TrainConfig,
                     device: torch.device) -> dict[str, Any]:
    """Score every train.long_text candidate on the dev split with the trained model and choose one (the report)."""
    backend = fast_backend(tokenizer, "train.long_text (choosing how long texts are read)")
    wrapper = Wrapper.of(backend)
    rules = [normalise(c.model_dump()) for c in cfg.long_text.candidates]
    contents = content_ids(backend, list(dev_df["text"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    run = torch_window_runner(model, input_names, pad_id, wrapper.type_id, device)
    classes = model.config.num_labels
    logits = candidate_logits(contents, rules, cfg.max_length, wrapper, run, cfg.eval_batch_size, classes)
    long = np.asarray([len(c) > cfg.max_length - wrapper.specials for c in contents], dtype=bool)
    windows = [windows_read(contents, rule, cfg.max_length, wrapper) for rule in rules]
    return long_text_report(rules, logits, dev_df["label"].to_numpy(), long, windows, cfg.long_text.min_gain_se)


def write_long_text(out_dir: Path, report: dict[str, Any]) -> None:
    write_json(out_dir / LONG_TEXT_FILE, report)


def summary(report: dict[str, Any]) -> str:
    """One line for the key figure and the log: the chosen rule, its dev accuracy and the first candidate's."""
    first, chosen = report["candidates"][0], next(c for c in report["candidates"] if c["chosen"])
    line = f"long texts read by {chosen['described']}: dev {chosen['dev_accuracy']:.4f}"
    if chosen is not first:
        line += f" vs {first['described']} {first['dev_accuracy']:.4f}"
    return line + f" ({report['long_rows']} of {report['dev_rows']} dev rows longer than one window)"
