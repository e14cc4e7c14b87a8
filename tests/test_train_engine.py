"""train engine: batch plan, token cache, checkpoints, resume after SIGKILL, LoRA, DDP, dvclive + dvc exp run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from tasks.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from tasks.training.lora import add_lora, merge_lora, trainable_share
from tasks.training.tokens import tokenize
from tasks.training.loader import epoch_steps
from tasks.train import build_model, fit
from tests.conftest import BIN, REPO, run, tiny_params
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


def test_checkpoints_keep_only_the_newest_and_ignore_half_written_files(tmp_path):
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    (tmp_path / ".step-000000012.pt.abc.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000006.pt", "step-000000009.pt"]
    path, state = load_latest(tmp_path)
    assert path.name == "step-000000009.pt" and state == {"step": 9}
    save_checkpoint(tmp_path, 12, {"step": 12}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000009.pt", "step-000000012.pt"]


def test_gradient_accumulation_takes_one_optimizer_step_per_group(tiny_model_dir):
    steps = {}
    for accum in (1, 2):
        cfg = tiny_train_cfg(tiny_model_dir, batch_size=8, gradient_accumulation_steps=accum)
        model, tokenizer = build_model(str(tiny_model_dir), cfg.data.label_names, cfg.seed)
        outcome = fit(model, tokenizer, toy_split(24, 0), toy_split(8, 1), cfg.train, cfg.data.label_names,
                      cfg.seed, torch.device("cpu"))
        steps[accum] = len(outcome.steps)
    assert steps == {1: 6, 2: 3}


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
    assert saved["state"]["epoch"] == 1 and 0 < saved["state"]["step_in_epoch"] < 12, "killed mid-epoch"
    assert not (work / "result.pt").exists()
    subprocess.run([*cmd, str(work), "0"], env=script_env(), check=True, capture_output=True)

    a, b = (torch.load(runs[n] / "result.pt", weights_only=False) for n in ("uninterrupted", "killed"))
    assert a["resumed_from"] is None and b["resumed_from"].endswith(".pt")
    for key in ("final", "best"):
        assert max(float((a[key][k] - b[key][k]).abs().max()) for k in a[key]) <= 1e-6
    assert len(b["history"]) == 2 and len(b["steps"]) == 24
    for x, y in zip(a["history"] + a["steps"], b["history"] + b["steps"]):
        assert x.keys() == y.keys() and all(abs(x[k] - y[k]) <= 1e-6 for k in x)


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
    assert loss_rows[0].split("\t") == ["step", "loss"] and len(loss_rows) > 10
    assert (live / "plots" / "metrics" / "dev" / "accuracy.tsv").is_file()
    stamp = json.loads(paths.train_stamp.read_text())
    assert stamp["method"] == "full" and stamp["world_size"] == 1 and stamp["resumed_from"] is None
    assert stamp["gradient_accumulation_steps"] == 1 and len(stamp["run_fingerprint"]) == 16
    assert set(stamp["tokens_cache_keys"]) == {"train", "dev"}
    assert not paths.checkpoints("train", stamp["run_fingerprint"]).exists(), "a finished run keeps no checkpoints"
    assert any(paths.token_cache.glob("*.npz"))


def test_train_stage_on_two_processes_syncs_gradients_and_only_rank0_writes(tmp_path, staged_pipeline):
    cfg, paths = staged_pipeline
    root = tmp_path / "ddp"
    shutil.copytree(paths.root / "data", root / "data")
    shutil.copytree(paths.stage_dir("prepare"), root / "artifacts" / "prepare")
    (root / "params.json").write_text(json.dumps(cfg.dump()))
    # torchrun is what `accelerate launch --multi_gpu` runs; on CPU the Accelerator joins its gloo group.
    done = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(SCRIPTS), "stage", str(root)], root, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    for key, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][key]), f"{key} differs between ranks"
    writes = [json.loads((root / f"writes-rank{r}.json").read_text()) for r in (0, 1)]
    assert any(w.startswith("staged_dir") for w in writes[0]) and writes[1] == []
    stamp = json.loads((root / "artifacts" / "train" / "stamp.json").read_text())
    assert stamp["world_size"] == 2 and stamp["effective_batch_size"] == 2 * cfg.train.batch_size


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
