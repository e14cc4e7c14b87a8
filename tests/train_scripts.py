"""Training runs in their own processes, for tests that kill a run or launch several ranks.

    python tests/train_scripts.py resume WORK SECONDS_PER_FORWARD
        fit() on WORK/{params.json,train.parquet,dev.parquet} with checkpoints in WORK/checkpoints and
        dvclive curves in WORK/live; writes WORK/result.pt (final and best weights, history, per-step log,
        resumed_from).
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train_scripts.py stage ROOT
        the train stage shell on project ROOT (params in ROOT/params.json), each rank seeing its own dev
        accuracy (rank 0: 0.1, 0.2, 0.3, ... by epoch; the others: 0.9, 0.8, ...); each rank records its final
        weights, history and whether its process group is still up in ROOT/rank<i>.pt, and every artifact or
        checkpoint write it made in ROOT/writes-rank<i>.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.config import parse_config  # noqa: E402


def resume(work: Path, seconds_per_forward: float) -> None:
    from tasks.train import build_model, fit

    cfg = parse_config(json.loads((work / "params.json").read_text()))
    model, tokenizer = build_model(cfg.train.base_model, cfg.data.label_names, cfg.seed)
    if seconds_per_forward:  # slow the run down so the test can kill it mid-epoch; numerics untouched
        model.register_forward_pre_hook(lambda *_: time.sleep(seconds_per_forward))
    outcome = fit(model, tokenizer, pd.read_parquet(work / "train.parquet"), pd.read_parquet(work / "dev.parquet"),
                  cfg.train, cfg.data.label_names, cfg.seed, torch.device("cpu"),
                  checkpoint_dir=work / "checkpoints", token_cache=work / "tokens", live_dir=work / "live")
    torch.save({"final": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "best": outcome.best_state, "history": outcome.history, "steps": outcome.steps,
                "resumed_from": outcome.resumed_from}, work / "result.pt")


def stage(root: Path) -> None:
    import tasks.train as train_module
    from tasks.core.paths import ArtifactPaths

    cfg = parse_config(json.loads((root / "params.json").read_text()))
    writes: list[str] = []

    def record(name, original):
        def wrapped(*args, **kwargs):
            writes.append(f"{name} {args[0]}")
            return original(*args, **kwargs)
        return wrapped

    for name in ("staged_dir", "save_checkpoint", "LiveCurves", "copy_curves", "drop_checkpoints"):
        setattr(train_module, name, record(name, getattr(train_module, name)))
    original_fit, finals = train_module.fit, {}

    def fit_and_keep(model, *args, **kwargs):
        outcome = original_fit(model, *args, **kwargs)
        finals["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        finals["world_size"], finals["history"] = outcome.world_size, outcome.history
        return outcome

    rank, original_evaluate, evaluations = int(os.environ["RANK"]), train_module.evaluate_dev, []

    def evaluate_dev_of_this_rank(*args, **kwargs):  # the ranks disagree: they must still stop together
        evaluations.append(original_evaluate(*args, **kwargs))
        epoch = len(evaluations)
        return {**evaluations[-1], "dev_accuracy": epoch / 10 if rank == 0 else 1 - epoch / 10}

    train_module.fit, train_module.evaluate_dev = fit_and_keep, evaluate_dev_of_this_rank
    train_module.train.fn(cfg, ArtifactPaths(root))
    finals["process_group_alive"] = torch.distributed.is_initialized()
    torch.save(finals, root / f"rank{rank}.pt")
    (root / f"writes-rank{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        resume(Path(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1] == "stage":
        stage(Path(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
