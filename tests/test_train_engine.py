"""train engine: batch plan, token cache, checkpoints, resume after SIGKILL, LoRA, DDP, dvclive + dvc exp run."""

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import tasks.train as train_module
from tasks.core.config import parse_config
from tasks.core.paths import ArtifactPaths
from tasks.training.checkpoint import (CheckpointLoadError, list_checkpoints, load_latest, restore_rng_states,
                                       rng_states, save_checkpoint)
from tasks.training.lora import add_lora, merge_lora, trainable_share
from tasks.training.modeling import UnsafeWeightsError
from tasks.training.tokens import prune_token_cache, tokenize
from tasks.training.loader import epoch_steps
from tasks.train import build_model, fit
from tests.conftest import BIN, REPO, run, tiny_params, latest_artifact
from tests.test_train import tiny_train_cfg, toy_split

SCRIPTS = REPO / "tests" / "train_scripts.py"


def script_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def test_epoch_steps_are_a_function_of_seed_and_epoch_and_shard_evenly(tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=4, gradient_accumulation_steps=2).train
    lengths = np.random.default_rng(0).integers(1, 50, size=101)
    first = epoch_steps(lengths, cfg, 7, 1, 1, 0)
    assert [list(map(list, s)) for s in first] == [list(map(list, s)) for s in epoch_steps(lengths, cfg, 7, 1, 1, 0)]
    assert not np.array_equal(np.concatenate(sum(first, [])), np.concatenate(sum(epoch_steps(lengths, cfg, 7, 2, 1, 0), [])))
    assert len(first) == 13 and all(len(s) == 2 for s in first[:-1]), "26 batches of <= 4 rows, 2 per step"
    shards = [np.concatenate(sum(epoch_steps(lengths, cfg, 7, 1, 2, rank), [])) for rank in (0, 1)]
    assert len(epoch_steps(lengths, cfg, 7, 1, 2, 0)) == len(epoch_steps(lengths, cfg, 7, 1, 2, 1))
    assert not set(shards[0]) & set(shards[1])


@pytest.mark.heavy
def test_tokenize_caches_once_and_pads_each_batch_to_its_longest_text(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["short", "a somewhat longer sentence here", "mid length text"]
    first = tokenize(tokenizer, texts, 32, tmp_path)
    assert list(tmp_path.glob("*.npz")) == [tmp_path / f"{first.key}.npz"]
    again = tokenize(tokenizer, texts, 32, tmp_path)
    assert np.array_equal(again.offsets, first.offsets) and np.array_equal(again.flat["input_ids"], first.flat["input_ids"])
    batch = first.batch([0, 2])
    assert batch["input_ids"].shape == (2, int(first.lengths[[0, 2]].max()))
    expected = tokenizer([texts[0], texts[2]], padding=True, return_tensors="pt")
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert tokenize(tokenizer, texts, 4, tmp_path).key != first.key
    assert tokenize(tokenizer, texts, 32, tmp_path).key == first.key, "the same key after other calls"


@pytest.mark.heavy
def test_tokenize_cuts_a_long_text_into_windows_carrying_its_label_at_most_max_windows(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = [f"word{i}" for i in range(120)]  # far beyond 3 windows of 16 tokens
    texts = ["a short review", " ".join(words), "another short one"]
    tokens = tokenize(tokenizer, texts, 16, tmp_path, max_windows=3)
    assert tokens.owners.tolist() == [0, 1, 1, 1, 2] and tokens.lengths.max() == 16
    assert tokens.row_labels(np.array([0, 1, 0])).tolist() == [0, 1, 1, 1, 0], "each window carries its text's label"
    assert (tokens.windowed_texts, tokens.windowed_rows) == (1, 3)
    whole = tokenizer(texts[1])["input_ids"]  # [CLS] content [SEP]
    first, last = (tokens.batch([i])["input_ids"][0].tolist() for i in (1, 3))
    assert first == whole[:15] + whole[-1:], "the first window is the text's head"
    assert last == whole[:1] + whole[-15:], "the last window ends where the text ends"
    truncated = tokenize(tokenizer, texts, 16)
    for window_row, head_row in ((0, 0), (4, 2)):  # a text within one window: exactly what truncation gives
        assert all(torch.equal(tokens.batch([window_row])[k], truncated.batch([head_row])[k]) for k in truncated.flat)
    assert len({truncated.key, tokens.key, tokenize(tokenizer, texts, 16, max_windows=2).key}) == 3
    again = tokenize(tokenizer, texts, 16, tmp_path, max_windows=3)  # from the cache
    assert again.key == tokens.key and again.owners.tolist() == tokens.owners.tolist()


def test_token_cache_keeps_the_most_recently_used_entries(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    keys = [tokenize(tokenizer, [f"text number {i}"], 16, tmp_path).key for i in range(3)]
    for hours, key in enumerate(keys, start=1):  # written an hour apart, keys[0] first
        os.utime(tmp_path / f"{key}.npz", ns=(hours * 3600 * 10**9,) * 2)
    tokenize(tokenizer, ["text number 0"], 16, tmp_path)  # reading it makes it the most recently used
    assert prune_token_cache(tmp_path, keep=2) == [tmp_path / f"{keys[1]}.npz"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted(f"{k}.npz" for k in (keys[0], keys[2]))


@pytest.mark.heavy
def test_fit_prunes_the_token_cache_to_train_token_cache_entries(tmp_path, tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, token_cache_entries=2)
    for name in ("old-a", "old-b", "old-c"):
        (tmp_path / f"{name}.npz").write_bytes(b"tokens of splits long gone")
        os.utime(tmp_path / f"{name}.npz", ns=(10**9, 10**9))
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    outcome = fit(model, tokenizer, toy_split(8, 0), toy_split(4, 1), cfg.train, cfg.data.label_names, cfg.seed,
                  torch.device("cpu"), token_cache=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted(f"{k}.npz" for k in outcome.tokens_keys.values())


def test_checkpoints_keep_only_the_newest_and_ignore_half_written_files(tmp_path):
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    (tmp_path / ".step-000000012.pt.abc.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000006.pt", "step-000000009.pt"]
    path, state = load_latest(tmp_path)
    assert path.name == "step-000000009.pt" and state == {"step": 9}
    save_checkpoint(tmp_path, 12, {"step": 12}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000009.pt", "step-000000012.pt"]


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under folder: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Crash(Exception):
    """A run dying mid-way (the process survives, so the test can carry on)."""


def crash_at_training_forward(model, n: int) -> None:
    """Make the n-th training forward pass raise Crash (dev evaluation forwards do not count)."""
    calls = []

    def hook(module, _args):
        if module.training:
            calls.append(1)
            if len(calls) == n:
                raise Crash(f"training forward {n}")

    model.register_forward_pre_hook(hook)


def test_checkpoints_load_weights_only_and_restore_every_rng(tmp_path):
    save_checkpoint(tmp_path, 1, {"rng": rng_states()}, keep=1)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    _, saved = load_latest(tmp_path)
    restore_rng_states(saved["rng"])
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_a_checkpoint_holding_pickled_objects_is_refused_with_the_folder_to_delete(tmp_path):
    save_checkpoint(tmp_path, 5, {"rng": {"numpy": np.random.get_state()}}, keep=1)  # as tunegate wrote them before
    with pytest.raises(CheckpointLoadError, match=f"Delete {re.escape(str(tmp_path))} to train from the start"):
        load_latest(tmp_path)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_code_loads_models_only_from_safetensors_and_checkpoints_weights_only():
    problems, checked = [], 0
    for path in sorted([*(REPO / "tasks").rglob("*.py"), *(REPO / "flows").rglob("*.py")]):
        source, rel = path.read_text(encoding="utf-8"), path.relative_to(REPO)
        if "trust_remote_code" in source:
            problems.append(f"{rel}: mentions trust_remote_code")
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner, keywords = ast.unparse(node.func.value), {k.arg: k.value for k in node.keywords}
            if owner == "torch" and node.func.attr == "load":
                checked += 1
                if not is_true(keywords.get("weights_only")):
                    problems.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            if node.func.attr == "from_pretrained" and "Model" in owner:
                checked += 1
                if not is_true(keywords.get("use_safetensors")):
                    problems.append(f"{rel}:{node.lineno}: {owner}.from_pretrained without use_safetensors=True")
    assert problems == []
    assert checked >= 3, "the scan sees the checkpoint load and both model loads"


def test_training_helpers_never_import_a_stage_module():
    from tasks.core.config import STAGES

    stage_modules = {f"tasks.{stage}" for stage in STAGES}
    found = []
    for path in sorted((REPO / "tasks" / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # TYPE_CHECKING blocks too
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name} imports {name}" for name in names if name in stage_modules]
    assert found == []


def test_build_model_refuses_a_folder_with_only_pickled_weights(tmp_path, tiny_model_dir):
    from transformers import AutoModel

    for file in tiny_model_dir.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, tmp_path / file.name)
    torch.save(AutoModel.from_pretrained(tiny_model_dir).state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match=r"no safetensors weights \(pytorch_model.bin\)"):
        build_model(str(tmp_path), ["negative", "positive"], 0)


@pytest.mark.heavy
def test_gradient_accumulation_takes_one_optimizer_step_per_group(tiny_model_dir):
    steps = {}
    for accum in (1, 2):
        cfg = tiny_train_cfg(tiny_model_dir, batch_size=8, gradient_accumulation_steps=accum)
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        outcome = fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                      cfg.seed, torch.device("cpu"))
        steps[accum] = len(outcome.steps)
    assert steps == {1: 6, 2: 3}


@pytest.mark.heavy
def test_fit_appends_training_curves_while_it_runs(tmp_path, tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=8, epochs=2, early_stopping_patience=2)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    curves = tmp_path / "live" / "plots" / "metrics"
    seen = []  # (loss rows, dev accuracy rows) on disk at each training forward pass

    def rows(name: str) -> int:
        path = curves / f"{name}.tsv"
        return len(path.read_text().splitlines()) - 1 if path.exists() else 0

    model.register_forward_pre_hook(lambda module, _: seen.append((rows("train/loss"), rows("dev/accuracy")))
                                    if module.training else None)
    fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names, cfg.seed,
        torch.device("cpu"), live_dir=tmp_path / "live")
    assert seen == [(step, 0) for step in range(6)] + [(step, 1) for step in range(6, 12)], "6 steps per epoch"
    loss_rows = (curves / "train" / "loss.tsv").read_text().splitlines()
    assert loss_rows[0] == "step\tloss" and [r.split("\t")[0] for r in loss_rows[1:]] == [str(i) for i in range(1, 13)]
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert list(summary) == ["train", "dev", "best_dev_accuracy", "best_epoch", "step"] and summary["step"] == 12


@pytest.mark.heavy
def test_fit_resumed_after_a_crash_writes_the_same_curves_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, batch_size=8, epochs=2, early_stopping_patience=2, checkpoint_every_steps=2)

    def run_fit(name: str, crash_at: int | None = None):
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        if crash_at:
            crash_at_training_forward(model, crash_at)
        return fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names, cfg.seed,
                   torch.device("cpu"), checkpoint_dir=tmp_path / name / "checkpoints",
                   live_dir=tmp_path / name / "live")

    run_fit("uninterrupted")
    with pytest.raises(Crash):
        run_fit("crashed", crash_at=9)  # step 9 of 12: the newest checkpoint is step 8
    loss = tmp_path / "crashed" / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    assert len(loss.read_text().splitlines()) == 1 + 8, "the crashed run's curves reach its last step"
    resumed = run_fit("crashed")
    assert resumed.resumed_from.endswith("step-000000008.pt")
    expected = files_of(tmp_path / "uninterrupted" / "live")
    assert {"metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/dev/accuracy.tsv"} <= set(expected)
    assert files_of(tmp_path / "crashed" / "live") == expected, "byte for byte"


@pytest.mark.e2e
def test_fit_resumes_after_sigkill_mid_epoch_with_the_same_final_weights(tmp_path, tiny_model_dir, reviews_frame):
    raw = tiny_params(tiny_model_dir)
    raw["train"].update(epochs=2, batch_size=8, checkpoint_every_steps=3, keep_checkpoints=2,
                        early_stopping_patience=2)
    rows = reviews_frame[reviews_frame["source"] == "rotten_tomatoes"].sample(frac=1.0, random_state=0)
    runs = {}
    for name in ("uninterrupted", "killed"):
        work = tmp_path / name
        work.mkdir()
        (work / "params.json").write_text(json.dumps(raw))
        rows.iloc[:96].to_parquet(work / "train.parquet")
        rows.iloc[96:128].to_parquet(work / "dev.parquet")
        runs[name] = work
    cmd = [sys.executable, str(SCRIPTS), "resume"]
    subprocess.run([*cmd, str(runs["uninterrupted"]), "0"], env=script_env(), check=True, capture_output=True)

    work = runs["killed"]
    victim = subprocess.Popen([*cmd, str(work), "0.05"], env=script_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list_checkpoints(work / "checkpoints") and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run must be killed before it ends"
    _, saved = load_latest(work / "checkpoints")
    a = torch.load(runs["uninterrupted"] / "result.pt", weights_only=True)
    # 96 texts, the longer ones as windows (train.long_text.train_windows): 12+ steps of 8 rows an epoch
    steps_per_epoch = len(a["steps"]) // 2
    assert steps_per_epoch >= 12
    assert saved["state"]["epoch"] == 1 and 0 < saved["state"]["step_in_epoch"] < steps_per_epoch, "killed mid-epoch"
    assert not (work / "result.pt").exists()
    subprocess.run([*cmd, str(work), "0"], env=script_env(), check=True, capture_output=True)

    b = torch.load(runs["killed"] / "result.pt", weights_only=True)
    assert a["resumed_from"] is None and b["resumed_from"].endswith(".pt")
    for key in ("final", "best"):
        assert max(float((a[key][k] - b[key][k]).abs().max()) for k in a[key]) <= 1e-6
    assert len(b["history"]) == 2 and len(b["steps"]) == len(a["steps"])
    for x, y in zip(a["history"] + a["steps"], b["history"] + b["steps"]):
        assert x.keys() == y.keys() and all(abs(x[k] - y[k]) <= 1e-6 for k in x)
    assert files_of(runs["killed"] / "live") == files_of(runs["uninterrupted"] / "live"), "curves, byte for byte"


@pytest.mark.heavy
def test_lora_trains_adapters_and_saves_a_plain_model_with_the_same_logits(tmp_path, tiny_model_dir):
    cfg = tiny_train_cfg(tiny_model_dir, method="lora", learning_rate=1.0e-2)
    model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
    query_before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    model = add_lora(model, cfg.train.lora)
    assert trainable_share(model) < 0.2
    outcome = fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                  cfg.seed, torch.device("cpu"))
    model.load_state_dict(outcome.best_state)
    merged = merge_lora(model).eval()
    merged.save_pretrained(tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert not [k for k in loaded.state_dict() if "lora" in k]
    assert not torch.equal(loaded.bert.encoder.layer[0].attention.self.query.weight, query_before), "adapters merged"
    inputs = tokenizer(["a wonderful film", "terrible terrible"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, loaded(**inputs).logits, atol=1e-5)


def test_train_stage_writes_dvclive_logs_stamps_the_run_and_drops_its_checkpoints(staged_pipeline):
    cfg, paths = staged_pipeline
    live = paths.train_live
    metrics = json.loads((live / "metrics.json").read_text())
    assert {"train", "dev", "step"} <= set(metrics) and metrics["best_dev_accuracy"] > 0
    loss_rows = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert loss_rows[0].split("\t") == ["step", "loss"] and len(loss_rows) > 10, "no timestamp column"
    assert files_of(live) == files_of(paths.train_live_in_progress), "the curves written while it ran"
    assert (live / "plots" / "metrics" / "dev" / "accuracy.tsv").is_file()
    stamp = json.loads(paths.train_stamp.read_text())
    assert stamp["method"] == "full" and stamp["world_size"] == 1
    assert json.loads(paths.run_record("train").read_text())["resumed_from"] is None
    assert stamp["gradient_accumulation_steps"] == 1 and len(stamp["run_fingerprint"]) == 16
    assert set(stamp["tokens_cache_keys"]) == {"train", "dev"}
    assert not paths.checkpoints("train", stamp["run_fingerprint"]).exists(), "a finished run keeps no checkpoints"
    assert any(paths.token_cache.glob("*.npz"))


@pytest.mark.heavy
def test_train_stage_resumes_its_crashed_run_then_drops_checkpoints_of_abandoned_configurations(
        tmp_path, staged_pipeline, monkeypatch, capsys):
    cfg, paths = staged_pipeline
    root = tmp_path / "project"
    shutil.copytree(paths.root / "data", root / "data")
    shutil.copytree(paths.stage_dir("prepare"), root / "artifacts" / "prepare")
    raw = cfg.dump()
    raw["train"]["checkpoint_every_steps"] = 1  # housekeeping: same run, same result as staged_pipeline's
    cfg, project = parse_config(raw), ArtifactPaths(root)
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "end_epoch", lambda *_: (_ for _ in ()).throw(Crash("before the epoch ends")))
        with pytest.raises(Crash):
            train_module.train.fn(cfg, project)
    [current] = (root / ".tunegate" / "checkpoints" / "train").iterdir()
    assert list_checkpoints(current), "the crashed run left checkpoints"
    abandoned = current.parent / "0123456789abcdef"
    abandoned.mkdir()
    (abandoned / "step-000000003.pt").write_bytes(bytes(2_000_000))
    capsys.readouterr()

    train_module.train.fn(cfg, project)
    resumed_from = json.loads(project.run_record("train").read_text())["resumed_from"]
    assert resumed_from.startswith(str(current)), "the crashed run of this configuration resumed"
    assert "removed checkpoints of an abandoned configuration: .tunegate/checkpoints/train/0123456789abcdef (2 MB)" \
        in capsys.readouterr().err
    assert list(current.parent.iterdir()) == []
    assert files_of(project.train_live) == files_of(paths.train_live), "same curves as the uninterrupted run"


@pytest.mark.e2e
def test_train_stage_on_two_processes_syncs_gradients_stops_together_and_only_rank0_writes(tmp_path,
                                                                                          staged_pipeline):
    cfg, paths = staged_pipeline
    root = tmp_path / "ddp"
    shutil.copytree(paths.root / "data", root / "data")
    shutil.copytree(paths.stage_dir("prepare"), root / "artifacts" / "prepare")
    raw = cfg.dump()
    raw["train"].update(epochs=3, early_stopping_patience=0)
    (root / "params.json").write_text(json.dumps(raw))
    # torchrun is what `accelerate launch --multi_gpu` runs; on CPU the Accelerator joins its gloo group.
    # Each rank sees other dev figures (tests/train_scripts.py): rank 1 alone would stop after epoch 2 and
    # leave rank 0 waiting in epoch 3's all-reduce, so a timeout here means the ranks decided apart.
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(SCRIPTS), "stage", str(root)], cwd=root, env=script_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    for history in (ranks[0]["history"], ranks[1]["history"]):
        assert [e["dev_accuracy"] for e in history] == [0.1, 0.2, 0.3], "both follow the main process's figures"
    assert not ranks[0]["process_group_alive"] and not ranks[1]["process_group_alive"]
    for key, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][key]), f"{key} differs between ranks"
    writes = [json.loads((root / f"writes-rank{r}.json").read_text()) for r in (0, 1)]
    assert any(w.startswith("staged_dir") for w in writes[0]) and writes[1] == []
    stamp = json.loads((root / "artifacts" / "train" / "stamp.json").read_text())
    assert stamp["world_size"] == 2 and stamp["effective_batch_size"] == 2 * cfg.train.batch_size


@pytest.mark.e2e
def test_dvc_exp_run_sets_the_learning_rate_and_dvc_plots_read_the_training_curves(make_project):
    root = make_project()
    run([str(BIN / "dvc"), "exp", "run", "train", "-S", "train.learning_rate=0.002"], root)
    stamp = json.loads((root / "artifacts" / "train" / "stamp.json").read_text())
    assert stamp["config"]["train"]["learning_rate"] == 0.002
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root).stdout)["data"]
    for curve in ("train/loss", "train/lr", "dev/accuracy"):
        assert f"artifacts/train/live/plots/metrics/{curve}.tsv" in shown
    metrics = run([str(BIN / "dvc"), "metrics", "show"], root).stdout
    assert "artifacts/train/live/metrics.json" in metrics


@pytest.mark.e2e
def test_fit_in_a_prefect_flow_run_publishes_its_progress_and_epochs(prefect_api, tiny_model_dir):
    from prefect import flow

    from tasks.training.tracking import EPOCHS_KEY, PROGRESS_KEY, in_prefect_run

    cfg = tiny_train_cfg(tiny_model_dir, batch_size=8, epochs=2, early_stopping_patience=2)

    @flow(name="fit-in-a-flow")
    def fit_in_a_flow() -> list[dict]:
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        return fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names, cfg.seed,
                   torch.device("cpu")).history

    assert not in_prefect_run()
    history = fit_in_a_flow()
    assert latest_artifact(PROGRESS_KEY).data == 100.0
    table = latest_artifact(EPOCHS_KEY).data
    assert json.loads(table) == history and len(history) == 2


def test_restoring_cuda_rng_states_puts_back_only_as_many_as_gpus_are_visible(monkeypatch):
    states = {**rng_states(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}  # saved on a 2-GPU host
    restored = []

    def set_rng_state(state, device=0):  # a 1-GPU host: device 1 does not exist
        if device >= 1:
            raise IndexError(f"no CUDA device {device}")
        restored.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    note = restore_rng_states(states)
    assert restored == [0]
    assert "CUDA RNG states of 2 GPU(s) and 1 are visible here: restored 1" in note
