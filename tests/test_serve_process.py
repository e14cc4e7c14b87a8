"""`tunegate serve` started as a user would (the console script, a free port, keys in the environment, torch and
transformers unimportable), called over HTTP, and stopped with SIGTERM; once with one worker, once with two."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tasks.runtime.settings import API_KEYS_ENV
from tests.conftest import _BLOCK_HEAVY, BIN, REPO
from tests.test_serve_app import metric

KEY = "process-test-key"
TEXTS = ["a gripping, beautiful film", "dull and far too long"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(folder: Path, scratch: Path, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    """`tunegate serve` on a free port, with torch/transformers blocked; (process, base URL, its output file)."""
    blocker = scratch / "block-heavy"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(_BLOCK_HEAVY)
    port = free_port()
    env = {**os.environ, API_KEYS_ENV: KEY, "TUNEGATE_BLOCKED_LOG": str(scratch / "blocked.log"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)}
    (scratch / "blocked.log").write_text("")
    output = scratch / "serve.log"
    process = subprocess.Popen(
        [str(BIN / "tunegate"), "serve", "--project", str(REPO), "--model", str(folder), "--port", str(port),
         "--log-dir", str(scratch / "predictions"), "--reload-seconds", "0", *flags],
        cwd=scratch, env=env, stdout=output.open("w"), stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", output


def wait_ready(process: subprocess.Popen, url: str, output: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tunegate serve exited ({process.returncode}):\n{output.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"not ready within {timeout_s} s:\n{output.read_text()}")


def stop(process: subprocess.Popen, output: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"did not stop within 60 s of SIGTERM:\n{output.read_text()}") from None


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_process_answers_over_http_with_keys_and_stops_on_sigterm(served_folders, tmp_path,
                                                                        workers):
    process, url, output = start_service(served_folders[0], tmp_path, "--workers", str(workers), "--threads", "1")
    try:
        wait_ready(process, url, output)
        keyed = {"Authorization": f"Bearer {KEY}"}
        answers = [httpx.post(f"{url}/v1/predict", json={"texts": TEXTS}, headers=keyed, timeout=30)
                   for _ in range(6)]
        refused = httpx.post(f"{url}/v1/predict", json={"texts": TEXTS}, timeout=30)
        live = httpx.get(f"{url}/v2/health/live", timeout=5)
        metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}, timeout=5)
    finally:
        code = stop(process, output)
    log = output.read_text()
    assert code == 0, log
    assert [a.status_code for a in answers] == [200] * 6, log
    body = answers[0].json()
    assert [p["label"] for p in body["predictions"]] and answers[0].headers["X-Model-Version"] == body["model_version"]
    assert refused.status_code == 401 and live.status_code == 200
    assert metrics.status_code == 200
    scored = sum(metric(metrics.text, "tunegate_texts_scored_total", label=label) for label in ("negative", "positive"))
    assert scored == 6 * len(TEXTS), "every worker's texts are counted" if workers > 1 else "texts are counted"
    assert (tmp_path / "blocked.log").read_text().split() == [], "tunegate serve tried to import torch/transformers"
    assert "no API keys" not in log and TEXTS[0] not in log


# ---------------------------------------------------------------- the command line and the runner (fast)


def test_serve_cli_has_one_flag_per_setting_that_wins_over_params(tmp_path, monkeypatch):
    from flows.cli import build_parser
    from tasks.core.config import ServeConfig
    from tasks.runtime.settings import load_serve_settings

    args = build_parser().parse_args(["serve", "--max-batch-size", "4", "--no-log-texts", "--threads", "2",
                                      "--cors-origins", "https://a.example", "https://b.example"])
    flags = {name: getattr(args, name) for name in ServeConfig.model_fields}
    assert {k for k, v in flags.items() if v is not None} == {"max_batch_size", "log_texts", "threads", "cors_origins"}
    monkeypatch.setenv("TUNEGATE_MAX_BATCH_SIZE", "8")  # a flag beats the variable, the variable beats params.yaml
    monkeypatch.setenv("TUNEGATE_MAX_WAIT_MS", "9")
    settings = load_serve_settings(REPO / "params.yaml", flags)
    assert (settings.max_batch_size, settings.max_wait_ms, settings.threads) == (4, 9.0, 2)
    assert settings.cors_origins == ["https://a.example", "https://b.example"] and settings.log_texts is False
    usage = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "serve.max_batch_size" in usage and "TUNEGATE_MAX_BATCH_SIZE" in usage


def test_serve_with_the_old_scheduling_flags_points_to_tunegate_schedule(capsys):
    from flows.cli import build_parser, main

    assert main(["serve", "--cron", "0 3 * * *"]) == 2
    err = capsys.readouterr().err
    assert "tunegate schedule" in err and len(err.strip().splitlines()) == 1
    scheduled = build_parser().parse_args(["schedule", "--cron", "0 4 * * *", "--name", "nightly",
                                           "-S", "train.epochs=2"])
    assert (scheduled.cron, scheduled.name, scheduled.set) == ("0 4 * * *", "nightly", ["train.epochs=2"])


def test_thread_plan_splits_the_cores_and_warns_when_oversubscribed(tmp_path):
    from tasks.serving.scoring import thread_plan
    from tasks.serving.service import tokenizer_environment
    from tests.test_serve_app import serve_settings

    assert thread_plan(serve_settings(tmp_path, workers=2), 8) == (4, None)
    threads, warning = thread_plan(serve_settings(tmp_path, workers=3), 2)  # at least one thread each
    assert threads == 1 and "3 onnxruntime threads on 2 cores" in warning
    threads, warning = thread_plan(serve_settings(tmp_path, workers=2, threads=4), 4)
    assert threads == 4 and "8 onnxruntime threads on 4 cores" in warning
    assert tokenizer_environment(1) == {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
