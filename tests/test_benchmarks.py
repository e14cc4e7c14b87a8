"""Benchmarks: the inference benchmark's own arithmetic, and a smoke run of every script in benchmarks/
on the tiny model and a few rows (each must print its JSON result line), so a refactor cannot break one."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ruamel.yaml import YAML

from benchmarks.inference import encoder_gemms, int8_floor_ms, time_interleaved
from tests.conftest import REPO, tiny_params


def test_int8_floor_is_each_layers_int8_gemms_plus_attention_products_at_the_fp32_rate():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    assert encoder_gemms(config, 10) == {"qkv": (10, 4, 12), "attention_out": (10, 4, 4), "ffn_in": (10, 4, 8),
                                         "ffn_out": (10, 8, 4)}
    kernel_ms = {"int8_qkv": 3.0, "int8_attention_out": 2.0, "int8_ffn_in": 4.0, "int8_ffn_out": 5.0,
                 "fp32_ffn_in": 10.0, "empty": 1.0}
    # GEMMs less the empty call: 2 + 1 + 3 + 4 = 10 ms a layer; FP32 at 9 ms per 10*4*8 MACs;
    # attention products 2 * tokens^2 * hidden = 800 MACs a layer -> 22.5 ms; two layers
    assert int8_floor_ms(config, batch=1, tokens=10, kernel_ms=kernel_ms) == 2 * (10 + 22.5)


def test_interleaved_timing_gives_every_contender_its_runs_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    figures = time_interleaved(calls, runs=6, rounds=3)
    assert set(figures) == {"a", "b", "c"} and all(f["p50_ms"] >= 0 for f in figures.values())
    rounds = order[3 * 3:]  # after 3 warm-up calls each: 3 rounds of (1 untimed + 2 timed) calls per contender
    assert len(rounds) == 3 * 3 * 3
    assert rounds[:9] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert rounds[9:12] == ["b"] * 3 and rounds[18:21] == ["c"] * 3, "each round starts one contender later"


def run_benchmark(script: str, *args: str, cwd: Path) -> dict:
    """Run benchmarks/<script> as `make bench*` does; return the JSON line it ends with."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def tiny_project(tmp_path, tiny_model_dir) -> Path:
    """A project folder whose params.yaml names the tiny model (and the suites beside it)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "expectations").symlink_to(REPO / "expectations")
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(tiny_params(tiny_model_dir), handle)
    return root


@pytest.mark.e2e
def test_cpu_kernels_benchmark_smoke_run_prints_its_json(tmp_path):
    result = run_benchmark("cpu_kernels.py", "--hidden", "32", "--intermediate", "64", "--runs", "3",
                           "--layer-norm-runs", "3", cwd=tmp_path)
    fields = {"fp32_gmacs", "int8_gmacs", "skip_layer_norm_us", "add_layer_norm_us", "int8_over_fp32",
              "skip_layer_norm_slowdown"}
    assert set(result) == {"b1x32", "b32x128"} and all(set(shape) == fields for shape in result.values())


@pytest.mark.e2e
def test_data_contracts_benchmark_smoke_run_prints_its_json(tiny_project, tmp_path):
    out = tmp_path / "data_contracts.json"
    result = run_benchmark("data_contracts.py", "--sizes", "1000", "--project", str(tiny_project), "--out", str(out),
                           cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    (figures,) = result["details"]
    assert figures["rows"] == 1000 and figures["contracts_pass"] is True
    assert figures["near_duplicate_pairs"] >= 5, "the 5 planted near-duplicate pairs are found"
    assert "token_contract_seconds" in figures, "the smallest size also times the token-length contract"


@pytest.mark.e2e
def test_train_vs_trainer_benchmark_smoke_run_prints_its_json(tiny_project, tiny_model_dir, tmp_path):
    out = tmp_path / "train_vs_trainer.json"
    result = run_benchmark("train_vs_trainer.py", "--project", str(tiny_project), "--train-rows", "32",
                           "--dev-rows", "16", "--rounds", "1", "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    contenders = ("tunegate", "trainer_run_glue", "trainer_best")
    assert all(0.0 <= result[name]["dev_accuracy"] <= 1.0 and result[name]["samples_per_s"] > 0 for name in contenders)
    assert 0 < result["train_rows"] <= 32 and 0 < result["dev_rows"] <= 16
    assert result["epochs"] == 1 and result["rounds"] == 1 and result["base_model"] == str(tiny_model_dir)


@pytest.mark.e2e
def test_inference_benchmark_smoke_run_on_a_finished_run_prints_its_json(staged_pipeline, tmp_path):
    cfg, paths = staged_pipeline
    out = tmp_path / "inference.json"
    result = run_benchmark("inference.py", "--project", str(paths.root), "--runs-b1", "2", "--runs-b32", "2",
                           "--rounds", "1", "--out", str(out), cwd=tmp_path)
    assert json.loads(out.read_text()) == result
    assert set(result["contenders"]) == {"pytorch_eager_fp32", "onnxruntime_fp32", "onnxruntime_optimized_fp32",
                                         "onnxruntime_int8"}
    quantized = json.loads(paths.quantization_report.read_text())
    # The benchmark scores the shipped INT8 model on the test split, as the gate does (batches may differ: one row).
    assert result["int8_rung"] == quantized["chosen"]
    shipped = json.loads(paths.decision.read_text())["metrics"]
    assert result["contenders"]["onnxruntime_int8"]["accuracy"] == pytest.approx(shipped["accuracy"]["value"],
                                                                                 abs=1.01 / shipped["rows"])
    assert set(result["int8_ceiling"]) == {"b1", "b32x128"}
