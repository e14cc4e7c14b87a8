"""Which distillation recipe earns the student its place: a sweep over distill's keys on a finished run.

Each recipe is a set of distill keys (layers kept, FFN share, alpha, temperature, epochs, learning rate) applied to
params.yaml's distill section; the student is cut from the run's teacher (artifacts/train/model) and distilled by the
distill stage's own code (tasks.distill.distill_student: FFN importance, pruning, distill_fit) on the same rows the stage reads
(the training split as train reads it, plus the transfer sentences). The teacher's logits on those rows are computed
once and shared by every recipe. Each student is judged as quantize judges the student's ceiling: its PyTorch labels
against the teacher's on quantize's judging rows (dev after the calibration rows), both reading long texts by the
run's chosen rule, the accuracy drop's paired bootstrap interval against distill.max_accuracy_drop, and agreement
against distill.min_agreement.

    python benchmarks/distill_recipes.py [--project .] [--params P] [--recipes former,default,...] [--quick]

Prints a table, then one JSON line: {"recipes": [{name, keys, dev_drop, dev_drop_interval, outcome, agreement,
passes, train_seconds}, ...], "teacher_logits_seconds", "rows": {...}, "bounds": {...}, "cpu": ...}. Seconds depend
on the host's load: run it on a quiet host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.host import cpu_facts  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402
from tasks.distill import distill_student, gather_transfer, training_rows  # noqa: E402
from tasks.judging.stats import CHECK_PASS, paired_cost  # noqa: E402
from tasks.quantize import judging_rows  # noqa: E402
from tasks.training.engine import tokens_logits  # noqa: E402
from tasks.training.modeling import load_classifier, torch_logits  # noqa: E402
from tasks.training.reading import chosen_long_text  # noqa: E402

# Named recipes: distill keys over params.yaml's. "former" is the default before this sweep, "default" today's.
RECIPES: dict[str, dict[str, Any]] = {
    "former": {"keep_layers": [0, 2, 4], "alpha": 0.5, "temperature": 2.0},
    "3_layers": {"keep_layers": [0, 2, 4], "alpha": 1.0, "temperature": 1.0},
    "default": {},
    "former_loss": {"alpha": 0.5, "temperature": 2.0},
    "1_epoch": {"epochs": 1},
    "1_epoch_lr_2e-4": {"epochs": 1, "learning_rate": 2.0e-4},
    "ffn_quarter": {"ffn_keep": 0.25},  # a quarter of each kept layer's FFN: 25% fewer GEMM MACs than the default
}
QUICK = ("default", "former_loss")  # --quick: two recipes of one epoch that name no layers (a smoke run, any teacher)


def with_keys(cfg: PipelineConfig, keys: dict[str, Any]) -> PipelineConfig:
    """cfg with these distill keys replaced (validated as params.yaml's would be)."""
    distill = type(cfg.distill).model_validate({**cfg.distill.model_dump(), **keys})
    return cfg.model_copy(update={"distill": distill})


def judge(student: Any, teacher_pred: np.ndarray, rows: pd.DataFrame, tokenizer: Any, rule: dict[str, Any],
          cfg: PipelineConfig) -> dict[str, Any]:
    """The student's PyTorch labels against the teacher's on the judging rows, by distill's bounds."""
    truth = rows["label"].to_numpy()
    predicted = torch_logits(student, tokenizer, list(rows["text"]), cfg.train.max_length, cfg.distill.batch_size,
                             torch.device("cpu"), long_text=rule).argmax(axis=1)
    d = cfg.distill
    drop = paired_cost(truth, teacher_pred, predicted, len(cfg.data.label_names), d.max_accuracy_drop,
                       cfg.quantize.bootstrap_samples, cfg.quantize.confidence, cfg.seed)
    agreement = float((predicted == teacher_pred).mean())
    return {"dev_drop": round(drop["value"], 4), "dev_drop_interval": [round(drop["low"], 4), round(drop["high"], 4)],
            "outcome": drop["outcome"], "agreement": round(agreement, 4),
            "passes": drop["outcome"] == CHECK_PASS and agreement >= d.min_agreement}


def run(project: Path, params: Path, names: list[str], quick: bool, console: Console) -> dict[str, Any]:
    cfg, paths = load_config(params), ArtifactPaths(project)
    device = torch.device("cpu")
    teacher, tokenizer = load_classifier(paths.model_dir, device)
    splits = {name: pd.read_parquet(paths.split(name)) for name in ("train", "dev", "test")}
    transfer = gather_transfer(cfg, paths, splits)
    rows = training_rows(tokenizer, splits["train"], transfer.texts, cfg, paths)
    tick = time.perf_counter()
    teacher_logits = tokens_logits(teacher, rows.tokens, cfg.distill.batch_size, device)  # shared by every recipe
    teacher_seconds = time.perf_counter() - tick
    judged, _ = judging_rows(splits["dev"], cfg.quantize.calibration_rows)
    rule = chosen_long_text(paths)
    teacher_pred = torch_logits(teacher, tokenizer, list(judged["text"]), cfg.train.max_length,
                                cfg.distill.batch_size, device, long_text=rule).argmax(axis=1)
    results = []
    for name in names:
        keys = {**RECIPES[name], **({"epochs": 1} if quick else {})}
        recipe_cfg = with_keys(cfg, keys)
        d = recipe_cfg.distill
        student = distill_student(teacher, rows, recipe_cfg, device, teacher_logits)
        result = {"name": name, "keys": keys, "layers": list(d.keep_layers), "ffn_keep": d.ffn_keep,
                  "alpha": d.alpha, "temperature": d.temperature, "epochs": d.epochs,
                  "learning_rate": d.learning_rate,
                  **judge(student.model, teacher_pred, judged, tokenizer, rule, recipe_cfg),
                  "train_seconds": round(student.outcome.train_seconds, 1)}
        console.print(f"distill_recipes: {json.dumps(result)}")
        results.append(result)
    return {"recipes": results, "teacher_logits_seconds": round(teacher_seconds, 1),
            "rows": {"training": rows.labelled, "transfer": len(rows.tokens) - rows.labelled, "judged_dev": len(judged)},
            "reading": rule, "bounds": {"max_accuracy_drop": cfg.distill.max_accuracy_drop,
                                        "min_agreement": cfg.distill.min_agreement,
                                        "confidence": cfg.quantize.confidence},
            "cpu": {k: cpu_facts()[k] for k in ("model", "kind")}, "threads": torch.get_num_threads(), "quick": quick}


def print_table(summary: dict[str, Any]) -> None:
    """The recipes, one line each, within 80 columns."""
    print(f"\nOn {summary['rows']['judged_dev']} dev rows, student vs teacher (PyTorch); bounds: drop interval's "
          f"upper end <= {summary['bounds']['max_accuracy_drop']:g}, agreement >= "
          f"{summary['bounds']['min_agreement']:g}")
    print(f"{'recipe':<17}{'layers':<14}{'drop [95%], points':<23}{'agree':>7}{'train s':>9}{'pass':>6}")
    for r in summary["recipes"]:
        low, high = r["dev_drop_interval"]
        span = f"{100 * r['dev_drop']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        print(f"{r['name']:<17}{str(r['layers']):<14}{span:<23}{r['agreement']:>7.1%}{r['train_seconds']:>9.0f}"
              f"{'yes' if r['passes'] else 'no':>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project with a finished run")
    parser.add_argument("--params", type=Path, help="its params.yaml (default: the project's)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)} for one epoch each (a smoke run)")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()
    names = list(QUICK) if args.quick else [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}: choose from {', '.join(RECIPES)}")
    project = args.project.resolve()
    summary = run(project, args.params or project / "params.yaml", names, args.quick,
                  Console(stderr=True, soft_wrap=True))
    print_table(summary)
    line = json.dumps(summary)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
