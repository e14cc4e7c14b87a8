"""GPU check (issue 17): settle on one CUDA host, in about five minutes, what a CPU host cannot; print ONE JSON line.

    python benchmarks/gpu_check.py                  # on a GPU host (nothing carried: models are built here)
    python benchmarks/gpu_check.py --cpu-dry-run    # the same code paths on CPU; CUDA-only findings skipped with a reason
    python benchmarks/gpu_check.py --setup-report [--expect-gpu]   # what `make setup` runs after installing

Every finding is guarded: a failing check records its error in the JSON and the script carries on.
It lives in benchmarks/ (not a new scripts/ folder) because the top-level layout is fixed (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: import the project's tasks/ from this checkout
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The fix named when a GPU host got a torch that cannot use its GPU (PyPI's 2.13.0 is a CUDA 13 build).
TORCH_FIX = ("make setup LOCKED=no "
             "TORCH_INSTALL='torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126' "
             "(a CUDA 12.6 build for drivers older than CUDA 13's), or update the NVIDIA driver")


class SetupError(Exception):
    """Set-up installed a torch that cannot use the GPU nvidia-smi sees."""


def guarded(name: str, check: Callable[[], dict[str, Any]], findings: dict[str, Any]) -> None:
    """Run one check into findings[name]; a failure is recorded as its error, never raised."""
    start = time.perf_counter()
    try:
        findings[name] = check()
    except Exception as exc:  # noqa: BLE001 - the script's point is to report every finding, failed or not
        findings[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                          "where": traceback.format_exc().strip().splitlines()[-3:]}
    findings[name]["seconds"] = round(time.perf_counter() - start, 2)
    print(f"gpu_check: {name} done in {findings[name]['seconds']} s", file=sys.stderr, flush=True)


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports, or None where there is no nvidia-smi / GPU."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def onnxruntime_distribution() -> str | None:
    """Which onnxruntime wheel is installed: onnxruntime or onnxruntime-gpu (both share one module)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return None


def wheels() -> dict[str, Any]:
    """Which builds set-up installed: torch and its CUDA, the driver, the onnxruntime wheel and its providers."""
    import onnxruntime as ort
    import torch

    usable = torch.cuda.is_available()
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_usable": usable,
            "gpu": torch.cuda.get_device_name(0) if usable else None,
            "capability": list(torch.cuda.get_device_capability(0)) if usable else None,
            "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False) if usable else None,
            "nvidia_driver": nvidia_driver(), "onnxruntime": onnxruntime_distribution(),
            "onnxruntime_providers": ort.get_available_providers()}


def setup_line(found: dict[str, Any]) -> str:
    """One line saying which build set-up installed."""
    cuda = f"CUDA {found['torch_cuda']}" if found["torch_cuda"] else "CPU build"
    return (f"setup: torch {found['torch']} ({cuda}; GPU usable: {'yes, ' + found['gpu'] if found['cuda_usable'] else 'no'})"
            f" | NVIDIA driver: {found['nvidia_driver'] or 'none'} | {found['onnxruntime']} providers "
            f"{found['onnxruntime_providers']}")


def setup_problem(found: dict[str, Any], expect_gpu: bool) -> str | None:
    """Why a GPU host's set-up is not usable (naming the fix), or None."""
    if not expect_gpu or found["cuda_usable"]:
        return None
    if not found["torch_cuda"]:
        return f"nvidia-smi sees a GPU but torch {found['torch']} is a CPU build: {TORCH_FIX}"
    return (f"nvidia-smi sees a GPU (driver {found['nvidia_driver']}) but torch {found['torch']} (CUDA "
            f"{found['torch_cuda']}) cannot use it; the driver is likely older than CUDA {found['torch_cuda']} needs: "
            f"{TORCH_FIX}")


# A torch-free process: what `tunegate predict` and quantize under `dvc repro` are.
TORCH_FREE = r"""
import json, sys
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
preload = sys.argv[1] == "preload"
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
if preload and hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
options = ort.SessionOptions(); options.log_severity_level = 3
session = ort.InferenceSession(model.SerializeToString(), options, providers=sys.argv[2].split(","))
print(json.dumps({"providers": session.get_providers(), "torch_imported": "torch" in sys.modules}))
"""


def torch_free_session(providers: list[str]) -> dict[str, Any]:
    """The providers a session gets in a process that never imports torch, without and with preload_dlls()."""
    out = {}
    for mode in ("plain", "preload"):
        done = subprocess.run([sys.executable, "-c", TORCH_FREE, mode, ",".join(providers)], capture_output=True,
                              text=True, timeout=300)
        out[mode] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                     else {"error": done.stderr.strip()[-1500:]})
    out["asked"] = providers
    return out


class Crash(Exception):
    """Raised at a chosen training forward pass to simulate a killed run."""


def crash_at_forward(model: Any, count: int) -> None:
    calls = {"n": 0}

    def hook(module: Any, _: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] == count:
                raise Crash(f"simulated crash at training forward {count}")

    model.register_forward_pre_hook(hook)


class Bench:
    """The project's config, a packaged data slice and models built here (no weights carried)."""

    def __init__(self, dry: bool, work: Path):
        import pandas as pd

        from tasks.core.base_model import resolve_base_model
        from tasks.core.config import parse_config, read_params
        from tasks.core.data import default_data_source

        self.dry, self.work = dry, work
        self.cfg = parse_config(read_params(REPO / "params.yaml"))
        self.base_dir = Path(resolve_base_model(self.cfg.train.base_model, REPO)[0])
        rows = (48, 32) if dry else (2048, 256)
        full = pd.read_csv(default_data_source())
        rt = full[full["source"] == "rotten_tomatoes"].sample(frac=1.0, random_state=0)
        labels = self.cfg.data.label_names
        rt = rt.assign(label=rt["label"].map(lambda v: labels.index(str(v)) if str(v) in labels else int(v)))
        self.train_df = rt.iloc[:rows[0]].reset_index(drop=True)
        self.dev_df = rt.iloc[rows[0]:rows[0] + rows[1]].reset_index(drop=True)
        self.texts = list(self.dev_df["text"])
        self.exports: dict[str, tuple[Path, Any]] = {}  # size -> (onnx folder, PyTorch CPU FP32 logits)

    def model_dir(self, size: str) -> Path:
        """A randomly initialised BERT saved like a hub model: `tiny` (2 x 32) or `default` (the default model's
        config, 6 x 384), with the default model's tokenizer."""
        folder = self.work / f"{size}-bert"
        if folder.exists():
            return folder
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        if size == "tiny":
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
        else:
            config = BertConfig.from_pretrained(self.base_dir)
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    def train_cfg(self, **update: Any) -> Any:
        fields = type(self.cfg.train).model_fields
        base = {"epochs": 1, "max_length": 64, "early_stopping_patience": 1}
        return self.cfg.train.model_copy(update={k: v for k, v in {**base, **update}.items() if k in fields})

    def fit(self, size: str, device: Any, **update: Any) -> tuple[Any, Any, Any]:
        """tasks.train.fit on a fresh model of `size`; returns (outcome, model, tokenizer)."""
        from tasks.train import build_model, fit

        crash = update.pop("crash_at", None)
        checkpoint_dir = update.pop("checkpoint_dir", None)
        cfg = self.train_cfg(**update)
        model, tokenizer = build_model(str(self.model_dir(size)), self.cfg.data.label_names, self.cfg.seed)
        if crash:
            crash_at_forward(model, crash)
        outcome = fit(model, tokenizer, self.train_df, self.dev_df, cfg, self.cfg.data.label_names, self.cfg.seed,
                      device, checkpoint_dir=checkpoint_dir)
        return outcome, model, tokenizer


def fit_figures(outcome: Any, model: Any) -> dict[str, Any]:
    import torch

    from tasks.training.modeling import bf16_enabled

    device = next(model.parameters()).device
    return {"device": str(device), "bf16_autocast": bf16_enabled(device),
            "param_dtype": str(next(model.parameters()).dtype), "steps": len(outcome.steps),
            "samples_per_s": round(outcome.samples_seen / max(outcome.train_seconds, 1e-9), 1),
            "train_seconds": round(outcome.train_seconds, 2), "final_loss": outcome.steps[-1]["loss"],
            "dev_accuracy": outcome.best_dev_accuracy,
            "max_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None}


def fit_eager(bench: Bench, device: Any, size: str) -> dict[str, Any]:
    """One epoch of tasks.train.fit: bf16 autocast, fused AdamW, dataloader workers."""
    from tasks.train import make_optimizer
    from tasks.training.loader import step_loader

    outcome, model, tokenizer = bench.fit(size, device, compile=False)
    optimizer, _ = make_optimizer(model, bench.train_cfg(), 10, device)
    workers = step_loader([], bench.train_cfg(), device).num_workers
    model.load_state_dict(outcome.best_state)  # export checks run on trained logits (wider margins than random)
    model.save_pretrained(bench.work / f"classifier-{size}")
    tokenizer.save_pretrained(bench.work / f"classifier-{size}")
    return {**fit_figures(outcome, model), "fused_adamw": bool(optimizer.defaults.get("fused")),
            "dataloader_workers": workers, "model": size}


def fit_compiled(bench: Bench, device: Any, size: str) -> dict[str, Any]:
    """The same epoch with train.compile: true; dynamo's graph, graph-break and recompile counters."""
    import torch
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    original = torch.compile
    if bench.dry:  # same dynamo tracing, no inductor C++ build on a 2-core CPU
        torch.compile = lambda *a, **k: original(*a, **{**k, "backend": "eager"})
    try:
        outcome, model, _ = bench.fit(size, device, compile=True)
    finally:
        torch.compile = original
    counters = {group: {str(k)[:200]: v for k, v in values.items()} for group, values in dynamo_utils.counters.items()}
    stats = counters.get("stats", {})
    return {**fit_figures(outcome, model), "model": size, "backend": "eager (dry run)" if bench.dry else "inductor",
            "unique_graphs": stats.get("unique_graphs"), "graph_breaks": sum(counters.get("graph_break", {}).values()),
            "graph_break_reasons": list(counters.get("graph_break", {}))[:10],
            "recompiles": sum(counters.get("recompiles", {}).values()), "dynamo_stats": stats}


def resume_exactness(bench: Bench, device: Any, deterministic: bool) -> dict[str, Any]:
    """Crash mid-epoch, resume from the checkpoint: are the final weights bit-identical to an uninterrupted run?"""
    import torch

    folder = bench.work / f"resume-{'det' if deterministic else 'nondet'}"
    common = {"deterministic": deterministic, "checkpoint_every_steps": 2, "keep_checkpoints": 2, "batch_size": 8}
    whole, _, _ = bench.fit("tiny", device, checkpoint_dir=folder / "whole", **common)
    try:
        bench.fit("tiny", device, checkpoint_dir=folder / "crashed", crash_at=5, **common)
        return {"error": "the simulated crash did not happen (fewer than 5 steps)"}
    except Crash:
        pass
    resumed, _, _ = bench.fit("tiny", device, checkpoint_dir=folder / "crashed", **common)
    diffs = {k: float((whole.best_state[k].float() - resumed.best_state[k].float()).abs().max())
             for k in whole.best_state}
    return {"deterministic": deterministic, "resumed_from": Path(resumed.resumed_from or "").name,
            "bit_exact": all(torch.equal(whole.best_state[k], resumed.best_state[k]) for k in whole.best_state),
            "max_abs_weight_diff": max(diffs.values()), "losses_equal": whole.steps == resumed.steps}


def exported(bench: Bench, size: str) -> tuple[Path, Any]:
    """Export fit_eager's model of `size` with tasks.export (plain + optimised); its PyTorch CPU FP32 reference."""
    import torch

    from tasks.export import export_onnx, optimise_onnx
    from tasks.runtime.files import OPTIMIZED_FILE
    from tasks.runtime.long_text import HEAD
    from tasks.train import build_model
    from tasks.training.modeling import load_classifier, torch_logits

    if size in bench.exports:
        return bench.exports[size]
    onnx_dir, trained = bench.work / f"onnx-{size}", bench.work / f"classifier-{size}"
    if not trained.exists():  # fit_eager failed: a random head, same code path
        model, tokenizer = build_model(str(bench.model_dir(size)), bench.cfg.data.label_names, bench.cfg.seed)
        model.save_pretrained(trained)
        tokenizer.save_pretrained(trained)
    model, tokenizer = load_classifier(bench.work / f"classifier-{size}", torch.device("cpu"),
                                       attn_implementation="eager")
    raw = export_onnx(model, tokenizer, onnx_dir, 64, bench.cfg.export)
    optimise_onnx(raw, onnx_dir / OPTIMIZED_FILE, model.config, external=False)
    reference = torch_logits(model, tokenizer, bench.texts, 64, 32, torch.device("cpu"), long_text=HEAD)
    bench.exports[size] = onnx_dir, reference
    return onnx_dir, reference


def placement(session: Any) -> dict[str, dict[str, int]]:
    """Provider -> op type -> distinct nodes that ran there, from onnxruntime's profile of the session's runs."""
    profile = Path(session.end_profiling())
    nodes: dict[str, dict[str, set[str]]] = {}
    for event in json.loads(profile.read_text()):
        args, name = event.get("args", {}), event.get("name", "")
        if event.get("cat") == "Node" and "provider" in args and name.endswith("_kernel_time"):
            nodes.setdefault(args["provider"], {}).setdefault(args.get("op_name", "?"), set()).add(name)
    profile.unlink(missing_ok=True)
    return {provider: {op: len(names) for op, names in sorted(ops.items())} for provider, ops in nodes.items()}


def run_model(folder: Path, model_file: str, texts: list[str], providers: list[str], *, tf32: bool = False,
              no_cpu_fallback: bool = False) -> tuple[Any, list[str], dict[str, dict[str, int]]]:
    """Logits of one model through tasks.serving's session and tokenizer, the providers it got, and node placement."""
    import onnxruntime as ort

    from tasks.runtime.onnx_model import OnnxClassifier, inference_session

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / f"profile-{model_file}")
    if no_cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    classifier = OnnxClassifier(folder, model_file=model_file, target="cpu")  # tokenizer and inputs
    if tf32:  # onnxruntime's own default, for comparison: tasks.serving always turns TF32 off
        asked = [(CUDA, {"use_tf32": "1"}) if p == CUDA else p for p in providers]
        classifier.session = ort.InferenceSession(str(folder / model_file), options, providers=asked)
    else:
        classifier.session = inference_session(folder / model_file, options, providers=providers)
    logits = classifier.logits(texts, 32)
    return logits, classifier.session.get_providers(), placement(classifier.session)


def export_parity(bench: Bench, providers: list[str], size: str) -> dict[str, Any]:
    """FP32 parity of the plain and optimised exports on the serving provider (TF32 off), and with TF32 on."""
    from tasks.export import parity
    from tasks.runtime.files import MODEL_FILE, OPTIMIZED_FILE

    onnx_dir, reference = exported(bench, size)
    out: dict[str, Any] = {"model": size, "atol": bench.cfg.export.parity_atol, "rows": len(bench.texts)}
    for name in (MODEL_FILE, OPTIMIZED_FILE):
        logits, got, where = run_model(onnx_dir, name, bench.texts, providers)
        out[name] = {**parity(reference, logits), "providers": got, "nodes_by_provider": where}
    if CUDA in providers:
        logits, got, _ = run_model(onnx_dir, OPTIMIZED_FILE, bench.texts, providers, tf32=True)
        out["tf32_on"] = {**parity(reference, logits), "providers": got}
    return out


def fp16_no_fallback(bench: Bench, providers: list[str], size: str) -> dict[str, Any]:
    """The FP16 model on the first provider alone, CPU fallback disabled: node placement, difference, agreement."""
    from tasks.export import convert_fp16, fp16_parity_report
    from tasks.runtime.files import FP16_FILE, OPTIMIZED_FILE

    onnx_dir, reference = exported(bench, size)
    convert_fp16(onnx_dir / OPTIMIZED_FILE, onnx_dir / FP16_FILE, external=False)
    # onnxruntime refuses the option on a CPU-only session (CPU named and its fallback disabled).
    no_fallback = providers[0] != CPU
    logits, got, where = run_model(onnx_dir, FP16_FILE, bench.texts, providers[:1], no_cpu_fallback=no_fallback)
    atol = getattr(bench.cfg.export, "fp16_atol", 0.05)
    return {"model": size, **fp16_parity_report(reference, logits, atol), "providers": got,
            "cpu_fallback_disabled": no_fallback, "nodes_by_provider": where}


def int8_placement(bench: Bench, providers: list[str], size: str) -> dict[str, Any]:
    """Where each INT8 rung's nodes run when a session is offered CUDA then CPU (tasks.quantize.build_rung)."""
    from tasks.quantize import build_rung
    from tasks.runtime.files import MODEL_FILE, OPTIMIZED_FILE

    onnx_dir, _ = exported(bench, size)
    out: dict[str, Any] = {"model": size, "asked": providers}
    for rung in ("dynamic_per_channel", "static_minmax"):
        target = onnx_dir / f"{rung}.onnx"
        try:
            build_rung(rung, onnx_dir / OPTIMIZED_FILE, onnx_dir / MODEL_FILE, target, bench.texts[:16],
                       bench.cfg.quantize)
            _, got, where = run_model(onnx_dir, target.name, bench.texts[:32], providers)
            out[rung] = {"providers": got, "nodes_by_provider": where}
        except Exception as exc:  # noqa: BLE001 - one rung failing must not hide the other
            out[rung] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    return out


def training_tests() -> dict[str, Any]:
    """The test files that touch training, run on this host (their CUDA paths taken where CUDA is usable)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "tests/test_train.py", "tests/test_train_engine.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1:],
            "failures": [line for line in done.stdout.splitlines() if line.startswith("FAILED")][:10]}


def run_checks(dry: bool, with_tests: bool) -> dict[str, Any]:
    """Every finding, each guarded; CUDA-only ones skipped with a reason on a dry run."""
    findings: dict[str, Any] = {"mode": "cpu-dry-run" if dry else "gpu"}
    guarded("wheels", wheels, findings)
    if not dry:  # cuBLAS reads this when its handle is first created: set before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    device = torch.device("cpu" if dry else "cuda")
    providers = [CPU] if dry else [CUDA, CPU]
    size = "tiny" if dry else "default"
    guarded("torch_free_session", lambda: torch_free_session(providers), findings)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        bench_box: dict[str, Bench] = {}
        guarded("data_and_models", lambda: (bench_box.setdefault("b", Bench(dry, Path(tmp))), {"ok": True})[1],
                findings)
        bench = bench_box.get("b")
        if bench is None:
            return findings
        guarded("fit_eager", lambda: fit_eager(bench, device, size), findings)
        guarded("fit_compiled", lambda: fit_compiled(bench, device, size), findings)
        for deterministic in (True, False):
            guarded(f"resume_{'deterministic' if deterministic else 'nondeterministic'}",
                    lambda d=deterministic: resume_exactness(bench, device, d), findings)
        guarded("export_parity", lambda: export_parity(bench, providers, size), findings)
        # On a dry run this is the CPU provider alone: the code path, not a finding about CUDA.
        guarded("fp16_no_cpu_fallback", lambda: fp16_no_fallback(bench, providers, size), findings)
        guarded("int8_placement", lambda: int8_placement(bench, providers, size), findings)
    guarded("training_tests", training_tests if with_tests else
            (lambda: skipped("--no-tests (the suite runs these on CPU anyway)")), findings)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="run on CPU; skip CUDA-only findings")
    parser.add_argument("--setup-report", action="store_true", help="one line on the builds installed (make setup)")
    parser.add_argument("--expect-gpu", action="store_true", help="with --setup-report: fail unless torch can use CUDA")
    parser.add_argument("--no-tests", action="store_true", help="do not run the training test files")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.setup_report:
        found = wheels()
        line = setup_line(found)
        if args.expect_gpu:  # what a torch-free process (tunegate predict) actually gets, not what is offered
            got = torch_free_session([CUDA, CPU])["preload"]
            line += f" | torch-free onnxruntime session runs on {got.get('providers', got.get('error'))}"
        print(line)
        problem = setup_problem(found, args.expect_gpu)
        if problem:
            print(f"setup: ERROR: {problem}", file=sys.stderr)
            return 1
        return 0
    findings = run_checks(args.cpu_dry_run, with_tests=not (args.cpu_dry_run or args.no_tests))
    line = json.dumps(findings, default=str)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
