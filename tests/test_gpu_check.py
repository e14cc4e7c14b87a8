"""Set-up's build choice (what `make -n setup` would run on a GPU or CPU host), its one-line report and loud
failure, and the GPU check script: guarded findings and a CPU dry run of the same code paths."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from benchmarks.gpu_check import TORCH_FIX, guarded, setup_line, setup_problem
from tests.conftest import REPO


def setup_commands(tmp_path, has_gpu: str, *settings: str) -> list[str]:
    """The commands `make setup` would run (make -n) for a fresh venv, with GPU detection overridden."""
    done = subprocess.run(["make", "-n", "setup", f"HAS_GPU={has_gpu}", f"VENV={tmp_path / 'venv'}",
                           f"PYTHON={sys.executable}", *settings], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def lock_install(commands: list[str]) -> str:
    """The one pip install of the packages (the lock, hash-checked, no resolving)."""
    (line,) = [c for c in commands if " install " in c and "--require-hashes" in c]
    return line


def torch_install(commands: list[str]) -> str:
    (line,) = [c for c in commands if " install " in c and "torch==" in c]
    return line


def test_setup_on_a_gpu_host_installs_the_gpu_lock_with_no_pip_config(tmp_path):
    commands = setup_commands(tmp_path, "yes")
    install = lock_install(commands)
    # The GPU lock pins PyPI's torch==2.13.0 (the CUDA build); a local torch-2.13.0+cpu in find-links would
    # match that pin and fail its hash, so pip sees no config file and no find-links.
    assert install.startswith("env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null ")
    assert "-r requirements/lock/gpu.txt" in install and "--no-deps" in install and "--index-url" not in install
    assert any(c.endswith("pip install --quiet --disable-pip-version-check --no-compile --no-deps -e . 2>&1 | "
                          "{ grep -v \"^WARNING: Location 'file:\" || true; }") for c in commands)
    assert any(c.endswith("gpu_check.py --setup-report --expect-gpu") for c in commands), "fails loudly"


def test_setup_on_a_cpu_host_installs_the_cpu_lock(tmp_path):
    commands = setup_commands(tmp_path, "")
    install = lock_install(commands)
    assert "PIP_CONFIG_FILE" not in install and "-r requirements/lock/cpu.txt" in install
    assert any(c.endswith("gpu_check.py --setup-report") for c in commands)


@pytest.mark.parametrize("has_gpu, locked", [("", "yes"), ("yes", "yes"), ("", "no"), ("yes", "no")])
def test_setup_installs_without_compiling_then_compiles_the_venv_once_every_package_is_in(tmp_path, has_gpu, locked):
    """pip's byte-compiling runs one file at a time; the venv is compiled after the installs, a process per core."""
    commands = setup_commands(tmp_path, has_gpu, f"LOCKED={locked}")
    installs = [i for i, c in enumerate(commands) if " install " in c]
    assert installs and all("--no-compile" in commands[i] for i in installs)
    (compiled,) = [i for i, c in enumerate(commands) if " -m compileall " in c]
    assert compiled > max(installs) and f"-j 0 {tmp_path / 'venv'}/lib" in commands[compiled]


@pytest.mark.parametrize("has_gpu, extra", [("yes", "gpu"), ("", "cpu")])
def test_setup_unlocked_resolves_the_ranges_with_torch_first(tmp_path, has_gpu, extra):
    """LOCKED=no (another Python or platform, another CUDA build of torch): pyproject's ranges, as before locks."""
    commands = setup_commands(tmp_path, has_gpu, "LOCKED=no")
    assert not [c for c in commands if "--require-hashes" in c]
    assert "torch==2.13.0" in torch_install(commands)
    assert ("PIP_CONFIG_FILE=/dev/null" in torch_install(commands)) == (extra == "gpu")
    assert any(f"-e '.[{extra},dev]'" in c for c in commands)


@pytest.mark.heavy
def test_gpu_setup_install_sees_no_find_links_or_extra_index_from_env_or_config_files(tmp_path):
    # The very environment the GPU branch prefixes to pip, against find-links set both ways pip reads them.
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nfind-links = /opt/wheels\nextra-index-url = file:///opt/pypi/simple\n")
    env = {**os.environ, "PIP_FIND_LINKS": "/opt/wheels", "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple",
           "PIP_CONFIG_FILE": str(config)}
    prefix = lock_install(setup_commands(tmp_path, "yes")).split(" /")[0]  # `env -u ... PIP_CONFIG_FILE=/dev/null`
    pip_config = f"{shlex.quote(sys.executable)} -m pip config list"
    before = subprocess.run(["bash", "-c", pip_config], env=env, capture_output=True, text=True, timeout=60)
    after = subprocess.run(["bash", "-c", f"{prefix} {pip_config}"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert "find-links" in before.stdout and "extra-index-url" in before.stdout, "the check can see them"
    assert after.returncode == 0 and "find-links" not in after.stdout and "extra-index-url" not in after.stdout


WHEELS = {"torch": "2.13.0", "torch_cuda": "13.0", "cuda_usable": True, "gpu": "NVIDIA H200",
          "nvidia_driver": "580.65, NVIDIA H200", "onnxruntime": "onnxruntime-gpu 1.31.1",
          "onnxruntime_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def test_setup_report_names_torch_cuda_driver_and_onnxruntime_providers():
    line = setup_line(WHEELS)
    for part in ("torch 2.13.0", "CUDA 13.0", "NVIDIA H200", "driver: 580.65", "onnxruntime-gpu 1.31.1",
                 "CUDAExecutionProvider"):
        assert part in line


def test_setup_fails_naming_the_fix_when_a_gpu_host_got_torch_that_cannot_use_it():
    old_driver = {**WHEELS, "cuda_usable": False, "gpu": None, "nvidia_driver": "535.104, Tesla T4"}
    problem = setup_problem(old_driver, expect_gpu=True)
    assert "535.104" in problem and "CUDA 13.0" in problem and TORCH_FIX in problem
    cpu_build = {**old_driver, "torch": "2.13.0+cpu", "torch_cuda": None}
    assert "CPU build" in setup_problem(cpu_build, expect_gpu=True) and "cu126" in TORCH_FIX
    assert setup_problem(WHEELS, expect_gpu=True) is None
    assert setup_problem(cpu_build, expect_gpu=False) is None, "a CPU-only host expects no GPU"


@pytest.mark.e2e  # the script in a subprocess that imports torch (3 s or more): out of the quick loop
def test_setup_report_exits_nonzero_on_a_gpu_host_without_usable_cuda_here():
    # This CPU host stands in for a GPU host whose torch cannot reach the GPU.
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--setup-report", "--expect-gpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout.startswith("setup: torch ")
    assert "setup: ERROR:" in done.stderr and "TORCH_INSTALL=" in done.stderr


def test_a_failing_finding_records_its_error_and_the_next_one_still_runs():
    findings = {}
    guarded("broken", lambda: {"value": 1 / 0}, findings)
    guarded("fine", lambda: {"value": 1}, findings)
    assert findings["broken"]["error"].startswith("ZeroDivisionError") and findings["fine"]["value"] == 1


@pytest.mark.e2e
def test_gpu_check_cpu_dry_run_prints_one_json_line_of_findings(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--cpu-dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.strip().splitlines()
    findings = json.loads(line)
    errors = {name: f["error"] for name, f in findings.items() if isinstance(f, dict) and "error" in f}
    assert errors == {}
    assert findings["mode"] == "cpu-dry-run" and findings["training_tests"]["skipped"]
    assert findings["torch_free_session"]["preload"]["torch_imported"] is False
    assert findings["fit_eager"]["fused_adamw"] is True and findings["fit_compiled"]["unique_graphs"] >= 1
    for mode in ("resume_deterministic", "resume_nondeterministic"):
        assert findings[mode]["bit_exact"] is True, "on CPU a resumed run ends with the same weights"
    assert findings["export_parity"]["model.optimized.onnx"]["max_abs_diff"] <= findings["export_parity"]["atol"]
    assert findings["fp16_no_cpu_fallback"]["decisive_agreement"] == 1.0
    assert set(findings["int8_placement"]["dynamic_per_channel"]["nodes_by_provider"]) == {"CPUExecutionProvider"}
