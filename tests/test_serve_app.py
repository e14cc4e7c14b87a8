"""`tunegate serve`'s HTTP app, in process: every endpoint, every bad input and its status code, keys, the queue
refusing when full, timeouts, disconnects that cost no model call, and a swap under load that fails no request."""

import asyncio
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from tasks.runtime.settings import API_KEYS_ENV, load_serve_settings
from tasks.serving import scoring
from tasks.serving.app import create_app, explain_invalid, key_matches, presented_key
from tasks.runtime.prediction_log import read_prediction_log
from tasks.serving.scoring import ModelInfo, TextScore
from tasks.serving.source import Resolved, SourceError
from tests.conftest import REPO

LABELS = ["negative", "positive"]
KEY = "s3cret-key"


def serve_settings(tmp_path: Path, **flags):
    """The repo's serve settings with a private log folder, no reload poll, and `flags` on top."""
    return load_serve_settings(REPO / "params.yaml", {"log_dir": str(tmp_path / "predictions"), "reload_seconds": 0,
                                                      **flags})


class StandInModel:
    """A ServedModel stand-in: "good" in a text makes it positive; with a gate, each call blocks until it opens."""

    def __init__(self, version: str = "v1", gate: threading.Event | None = None):
        self.info = ModelInfo(name="tunegate", version=version, labels=LABELS, max_length=8, long_text={"rule": "head"},
                              model_sha256="ab" * 32, precision=None, folder="stand-in")
        self.gate, self.calls, self.entered = gate, [], threading.Event()

    def read(self, texts: list[str]) -> list[SimpleNamespace]:
        """Each word costs one model token."""
        return [SimpleNamespace(text=t, cost=len(t.split()) + 2) for t in texts]

    def score_read(self, items: list[SimpleNamespace], max_batch_size: int) -> list[TextScore]:
        return self.score([item.text for item in items], max_batch_size)

    def score(self, texts: list[str], max_batch_size: int) -> list[TextScore]:
        self.calls.append(list(texts))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        return [TextScore(label="positive" if "good" in t else "negative",
                          probabilities=[0.2, 0.8] if "good" in t else [0.9, 0.1],
                          tokens=len(t.split()) + 2, read_tokens=min(8, len(t.split()) + 2), unknown_tokens=0)
                for t in texts]

    def close(self) -> None:
        pass


class StandInSource:
    """A model source the test moves: `version` and `folder` now, or `error` raised."""

    description = "stand-in source"

    def __init__(self, version: str = "v1", folder: Path = Path("stand-in")):
        self.version, self.folder, self.error = version, folder, None

    def resolve(self) -> Resolved:
        if self.error:
            raise SourceError(self.error)
        return Resolved(self.version, self.folder)


@pytest.fixture
def stand_in(monkeypatch):
    """load_served replaced: every version loads as a StandInModel (models[version] shows its calls)."""
    models: dict[str, StandInModel] = {}

    def load(folder, name, version, threads):
        return models.setdefault(version, StandInModel(version))

    monkeypatch.setattr(scoring, "load_served", load)
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    return models


@asynccontextmanager
async def serving(app):
    """The app started (lifespan) with an in-process client."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://serve.test") as client:
            yield client


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def call(app, *requests):
    """Responses of (method, path, httpx kwargs) requests made one after another on the started app."""
    async def go():
        async with serving(app) as client:
            return [await client.request(method, path, **kw) for method, path, kw in requests]
    return run(go())


def metric(text: str, sample_name: str, /, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, value = line.rsplit(" ", 1)
        head, _, rest = sample.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if head == sample_name and got == want:
            return float(value)
    return 0.0


# ---------------------------------------------------------------- endpoints


def test_app_health_live_always_and_ready_only_once_started(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource())

    async def before_start():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            return await client.get("/v2/health/live"), await client.get("/v2/health/ready")

    live, ready = run(before_start())
    assert live.status_code == 200 and ready.status_code == 503 and ready.json()["error"] == "not_ready"
    live, ready = call(app, ("GET", "/v2/health/live", {}), ("GET", "/v2/health/ready", {}))
    assert live.status_code == 200 and ready.status_code == 200
    assert stand_in["v1"].calls == [], "readiness comes from load_served's own warm-up, not a request"


def test_app_predict_answers_label_probabilities_truncation_and_version(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource("v7"))
    (answer,) = call(app, ("POST", "/v1/predict", {"json": {"texts": ["a good film", "a dull film that goes on and "
                                                                                    "on and on and on"]}}))
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "v7"
    body = answer.json()
    assert body["model_name"] == "tunegate" and body["model_version"] == "v7"
    assert body["predictions"] == [
        {"label": "positive", "probabilities": {"negative": 0.2, "positive": 0.8}, "truncated": False},
        {"label": "negative", "probabilities": {"negative": 0.9, "positive": 0.1}, "truncated": True}]
    records = read_prediction_log(tmp_path / "predictions")  # flushed when the app stopped
    assert [r["model_version"] for r in records] == ["v7", "v7"]
    assert "a good film" not in json.dumps(records), "texts are logged only with serve.log_texts"


def test_app_model_metadata_names_the_version_and_404s_another_name(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource("v3"))
    mine, other = call(app, ("GET", "/v2/models/tunegate", {}), ("GET", "/v2/models/someone-else", {}))
    body = mine.json()
    parity = body.pop("parity")
    assert mine.status_code == 200 and body == {
        "name": "tunegate", "version": "v3", "labels": LABELS, "max_length": 8, "long_text": {"rule": "head"},
        "model_sha256": "ab" * 32, "precision": None, "platform": "onnxruntime"}
    # The stand-in's folder holds no parity certificate: served, and said so (tests/test_parity.py has the rest).
    assert parity["status"] == "no_certificate" and "carries no parity certificate" in parity["detail"]
    assert other.status_code == 404 and other.json()["error"] == "not_found"


def test_app_load_reports_the_version_served_and_whether_it_changed(tmp_path, stand_in):
    source = StandInSource("v1")
    app = create_app(serve_settings(tmp_path), tmp_path, source=source)

    async def go():
        async with serving(app) as client:
            same = await client.post("/v2/repository/models/tunegate/load")
            source.version = "v2"
            moved = await client.post("/v2/repository/models/tunegate/load")
            after = await client.post("/v1/predict", json={"texts": ["good"]})
            source.error = "the registry is unreachable"
            broken = await client.post("/v2/repository/models/tunegate/load")
            still = await client.post("/v1/predict", json={"texts": ["good"]})
            other = await client.post("/v2/repository/models/other/load")
            return same, moved, after, broken, still, other, (await client.get("/metrics")).text

    same, moved, after, broken, still, other, metrics = run(go())
    assert same.json() == {"model_name": "tunegate", "model_version": "v1", "changed": False}
    assert moved.json() == {"model_name": "tunegate", "model_version": "v2", "changed": True}
    assert after.json()["model_version"] == "v2"
    assert broken.status_code == 503 and "unreachable" in broken.json()["detail"]
    assert still.status_code == 200 and still.json()["model_version"] == "v2"
    assert other.status_code == 404
    assert metric(metrics, "tunegate_reload_failures_total") == 1
    assert metric(metrics, "tunegate_model_version_info", name="tunegate", version="v2") == 1
    assert metric(metrics, "tunegate_model_version_info", name="tunegate", version="v1") == 0


def test_app_failed_reload_poll_warns_counts_and_keeps_serving(tmp_path, stand_in, caplog):
    source = StandInSource("v1")
    app = create_app(serve_settings(tmp_path, reload_seconds=0.05), tmp_path, source=source)

    async def go():
        async with serving(app) as client:
            source.error = "no version in prod"
            await asyncio.sleep(0.3)
            return await client.post("/v1/predict", json={"texts": ["good"]}), (await client.get("/metrics")).text

    with caplog.at_level(logging.WARNING, logger="tasks.serving"):
        answer, metrics = run(go())
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"
    assert metric(metrics, "tunegate_reload_failures_total") >= 1
    assert "no version in prod" in caplog.text and "still serving v1" in caplog.text


def test_app_reload_poll_follows_a_new_version(tmp_path, stand_in):
    source = StandInSource("v1")
    app = create_app(serve_settings(tmp_path, reload_seconds=0.05), tmp_path, source=source)

    async def go():
        async with serving(app) as client:
            source.version = "v2"
            await asyncio.sleep(0.3)
            return await client.post("/v1/predict", json={"texts": ["good"]})

    assert run(go()).json()["model_version"] == "v2"


def test_app_openapi_describes_the_request_and_response_models_with_their_limits(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path, max_texts=5, max_text_chars=100), tmp_path, source=StandInSource())
    schema = app.openapi()
    texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 5, 100)
    predict = schema["paths"]["/v1/predict"]["post"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictResponse")
    assert {"400", "401", "413", "422", "429", "504"} <= set(predict["responses"])
    assert set(schema["paths"]) == {"/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v1/predict",
                                    "/v2/repository/models/{name}/load", "/metrics"}
    assert not any("path" in p["name"].lower() or "file" in p["name"].lower()
                   for ops in schema["paths"].values() for op in ops.values() for p in op.get("parameters", [])), \
        "no endpoint takes a file path"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, status, names", [
    (b'{"texts": []}', 422, "at least one text"),
    (json.dumps({"texts": ["x"] * 6}).encode(), 422, "serve.max_texts"),
    (json.dumps({"texts": ["x" * 101]}).encode(), 422, "serve.max_text_chars"),
    (b'{"texts": [1, 2]}', 422, "valid string"),
    (b'{"texts": "one text"}', 422, "valid list"),
    (b'{"text": ["x"]}', 422, '{"texts"'),
    (b'["x"]', 422, '{"texts"'),
    (b'{"texts": ["\\ud800"]}', 422, "unicode string"),  # a lone surrogate: legal JSON, not text
    (b'{"texts": ["x"', 422, "malformed JSON"),
    (b'', 422, '{"texts"'),
    (b'{"texts": ["caf\xe9"]}', 400, "not UTF-8"),
])
def test_app_predict_refuses_bad_input_naming_the_limit(tmp_path, stand_in, body, status, names):
    app = create_app(serve_settings(tmp_path, max_texts=5, max_text_chars=100), tmp_path, source=StandInSource())
    answer, metrics = call(app, ("POST", "/v1/predict", {"content": body, "headers": {"Content-Type":
                                                                                      "application/json"}}),
                           ("GET", "/metrics", {}))
    assert answer.status_code == status and set(answer.json()) == {"error", "detail"}
    assert names in answer.json()["detail"]
    assert metric(metrics.text, "tunegate_requests_refused_total", reason="invalid_input") == 1
    assert stand_in["v1"].calls == []


def test_app_refuses_a_body_over_the_limit_by_length_and_by_chunked_count(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path, max_body_bytes=2048, max_texts=1, max_text_chars=2000), tmp_path,
                     source=StandInSource())
    big = json.dumps({"texts": ["x" * 3000]}).encode()
    read = []

    async def chunks():  # no Content-Length: counted as it arrives; the rest is never read
        for i in range(0, len(big), 512):
            read.append(i)
            yield big[i:i + 512]

    async def go():
        async with serving(app) as client:
            declared = await client.post("/v1/predict", content=big, headers={"Content-Type": "application/json"})
            chunked = await client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
            return declared, chunked, (await client.get("/metrics")).text

    declared, chunked, metrics = run(go())
    assert declared.status_code == 413 and "serve.max_body_bytes" in declared.json()["detail"]
    assert chunked.status_code == 413 and chunked.json()["error"] == "body_too_large"
    assert metric(metrics, "tunegate_requests_refused_total", reason="body_too_large") == 2


def test_app_unknown_paths_and_methods_answer_json_errors(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource())
    missing, wrong_method = call(app, ("GET", "/etc/passwd", {}), ("GET", "/v1/predict", {}))
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error", "detail"}


# ---------------------------------------------------------------- keys


def test_key_matching_accepts_bearer_and_x_api_key_against_every_key():
    keys = (b"first", b"second")
    assert key_matches("second", keys) and not key_matches("secon", keys) and not key_matches("", keys)
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"authorization": b"bearer  abc "}) == "abc"
    assert presented_key({b"x-api-key": b"abc"}) == "abc"
    assert presented_key({b"authorization": b"Basic abc"}) is None


def test_app_with_keys_refuses_requests_without_a_valid_one_but_not_probes(tmp_path, stand_in, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops\nother-key\n\n")
    monkeypatch.setenv(API_KEYS_ENV, KEY)
    app = create_app(serve_settings(tmp_path, api_keys_file=str(keys_file)), tmp_path, source=StandInSource())
    texts = {"json": {"texts": ["good"]}}
    answers = call(app,
                   ("POST", "/v1/predict", texts),
                   ("POST", "/v1/predict", {**texts, "headers": {"Authorization": "Bearer wrong"}}),
                   ("POST", "/v1/predict", {**texts, "headers": {"X-API-Key": "other-key"}}),
                   ("POST", "/v1/predict", {**texts, "headers": {"Authorization": f"Bearer {KEY}"}}),
                   ("GET", "/metrics", {}), ("GET", "/openapi.json", {}), ("GET", "/v2/models/tunegate", {}),
                   ("POST", "/v2/repository/models/tunegate/load", {}),
                   ("GET", "/v2/health/live", {}), ("GET", "/v2/health/ready", {}),
                   ("GET", "/metrics", {"headers": {"X-API-Key": KEY}}))
    assert [a.status_code for a in answers] == [401, 401, 200, 200, 401, 401, 401, 401, 200, 200, 200]
    assert answers[0].json()["error"] == "unauthorized" and answers[0].headers["WWW-Authenticate"] == "Bearer"
    assert metric(answers[-1].text, "tunegate_requests_refused_total", reason="unauthorized") == 6


def test_app_without_keys_warns_at_start_and_never_logs_texts(tmp_path, stand_in, caplog):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource())
    with caplog.at_level(logging.DEBUG):
        (answer,) = call(app, ("POST", "/v1/predict", {"json": {"texts": ["a very private good sentence"]}}))
    assert answer.status_code == 200
    assert any(r.levelno == logging.WARNING and "no API keys" in r.getMessage() for r in caplog.records)
    assert "very private" not in caplog.text


def test_app_cors_is_off_unless_origins_are_configured(tmp_path, stand_in):
    preflight = {"headers": {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}}
    off = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource())
    on = create_app(serve_settings(tmp_path, cors_origins=["https://ui.example"]), tmp_path, source=StandInSource())
    (closed,) = call(off, ("OPTIONS", "/v1/predict", preflight))
    (opened,) = call(on, ("OPTIONS", "/v1/predict", preflight))
    assert "access-control-allow-origin" not in closed.headers
    assert opened.status_code == 200 and opened.headers["access-control-allow-origin"] == "https://ui.example"


# ---------------------------------------------------------------- queue, timeout, disconnect


def test_app_full_queue_answers_429_with_retry_after_at_once(tmp_path, monkeypatch, stand_in):
    gate = threading.Event()
    model = StandInModel("v1", gate)
    monkeypatch.setattr(scoring, "load_served", lambda *args: model)
    app = create_app(serve_settings(tmp_path, max_batch_size=2, max_queue_texts=4, max_texts=4, max_wait_ms=1), tmp_path,
                     source=StandInSource())

    async def go():
        async with serving(app) as client:
            first = asyncio.create_task(client.post("/v1/predict", json={"texts": ["a", "b"]}))
            await asyncio.to_thread(model.entered.wait, 10)  # the model is busy with the first request
            queued = asyncio.create_task(client.post("/v1/predict", json={"texts": ["c", "d", "e", "f"]}))
            while app.state.service.batcher.queued_texts < 4:
                await asyncio.sleep(0.005)
            refused = await client.post("/v1/predict", json={"texts": ["g"]})
            # Shed before the body is read: even a body that would get 422 gets the 429 of the full queue.
            shed = await client.post("/v1/predict", content=b'{"texts": [', headers={"Content-Type": "application/json"})
            gate.set()
            return await first, await queued, refused, shed, (await client.get("/metrics")).text

    try:
        first, queued, refused, shed, metrics = run(go())
    finally:
        gate.set()
    assert refused.status_code == 429 and refused.json()["error"] == "queue_full"
    assert shed.status_code == 429 and shed.headers["Retry-After"] == refused.headers["Retry-After"]
    assert int(refused.headers["Retry-After"]) >= 1 and "serve.max_queue_texts" in refused.json()["detail"]
    assert first.status_code == 200 and queued.status_code == 200
    assert metric(metrics, "tunegate_requests_refused_total", reason="queue_full") == 2
    assert "g" not in [t for c in model.calls for t in c]


def test_app_request_not_scored_in_time_gets_504(tmp_path, monkeypatch, stand_in):
    gate = threading.Event()
    model = StandInModel("v1", gate)
    monkeypatch.setattr(scoring, "load_served", lambda *args: model)
    app = create_app(serve_settings(tmp_path, request_timeout_s=0.2), tmp_path, source=StandInSource())

    async def go():
        async with serving(app) as client:
            late = await client.post("/v1/predict", json={"texts": ["good"]})
            gate.set()
            return late, (await client.get("/metrics")).text

    try:
        late, metrics = run(go())
    finally:
        gate.set()
    assert late.status_code == 504 and "serve.request_timeout_s" in late.json()["detail"]
    assert metric(metrics, "tunegate_requests_refused_total", reason="timeout") == 1


async def disconnecting_call(app, body: bytes) -> list[dict]:
    """POST /v1/predict as a client that sends its body and hangs up at once; what the app sent."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("serve.test", 80)}
    await app(scope, receive, send)
    return sent


@pytest.mark.heavy
def test_app_client_that_disconnects_before_scoring_costs_no_model_call(tmp_path, stand_in):
    # The batch waits 300 ms for company: long enough for the client to be gone before any model call.
    app = create_app(serve_settings(tmp_path, max_wait_ms=300), tmp_path, source=StandInSource())

    async def go():
        async with serving(app) as client:
            await disconnecting_call(app, json.dumps({"texts": ["good", "bad"]}).encode())
            await asyncio.sleep(0.5)
            return (await client.get("/metrics")).text

    metrics = run(go())
    assert stand_in["v1"].calls == []
    assert metric(metrics, "tunegate_requests_refused_total", reason="disconnected") == 1


# ---------------------------------------------------------------- metrics


def test_app_metrics_count_requests_batches_labels_and_version(tmp_path, stand_in):
    app = create_app(serve_settings(tmp_path), tmp_path, source=StandInSource("v9"))
    *_, answer = call(app, ("POST", "/v1/predict", {"json": {"texts": ["good", "good", "dull"]}}),
                      ("GET", "/v2/models/tunegate", {}), ("GET", "/no/such/path", {}), ("GET", "/metrics", {}))
    text = answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert metric(text, "tunegate_request_seconds_count", endpoint="/v1/predict", status="200") == 1
    assert metric(text, "tunegate_request_seconds_count", endpoint="/v2/models/{name}", status="200") == 1
    assert metric(text, "tunegate_request_seconds_count", endpoint="other", status="404") == 1
    assert metric(text, "tunegate_texts_scored_total", label="positive") == 2
    assert metric(text, "tunegate_texts_scored_total", label="negative") == 1
    assert metric(text, "tunegate_batch_texts_sum") == 3 and metric(text, "tunegate_model_call_seconds_count") == 1
    assert metric(text, "tunegate_model_version_info", name="tunegate", version="v9") == 1
    assert metric(text, "tunegate_queue_texts") == 0
    assert "tunegate_prediction_log_dropped_total" in text


def test_explain_invalid_names_each_limit_and_its_setting(tmp_path):
    settings = serve_settings(tmp_path)
    line = explain_invalid([{"loc": ("body", "texts"), "type": "too_long", "msg": "x"},
                            {"loc": ("body", "texts", 3), "type": "string_too_long", "msg": "x"}], settings)
    assert f"at most {settings.max_texts} texts per request (serve.max_texts)" in line
    assert f"texts[3] is longer than {settings.max_text_chars} characters (serve.max_text_chars)" in line


# ---------------------------------------------------------------- a real served folder


SWAP_TEXTS = ["a gripping, beautiful film", "dull",
              "far too long and far too loud, with a plot that never starts and an ending that never comes"]  # > 16 tokens


def test_app_serves_a_real_folder_as_load_served_scores_it(tmp_path, served_folders, monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    folder = served_folders[0]
    app = create_app(serve_settings(tmp_path, model=str(folder)), tmp_path)
    answer, info = call(app, ("POST", "/v1/predict", {"json": {"texts": SWAP_TEXTS}}),
                        ("GET", "/v2/models/tunegate", {}))
    expected = scoring.load_served(folder, "tunegate", None, threads=1).score(SWAP_TEXTS, 1)
    got = [[p["probabilities"][k] for k in LABELS] for p in answer.json()["predictions"]]
    assert np.allclose(got, [s.probabilities for s in expected], atol=1e-5)
    assert answer.json()["model_version"] == info.json()["version"] == answer.headers["X-Model-Version"]
    assert info.json()["version"].startswith("sha256:") and info.json()["model_sha256"].startswith(
        info.json()["version"].removeprefix("sha256:"))
    assert [p["truncated"] for p in answer.json()["predictions"]] == [False, False, True]


@pytest.mark.heavy
def test_app_swap_under_200_concurrent_requests_fails_none_and_mixes_no_versions(tmp_path, served_folders,
                                                                                  monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    first, second = served_folders
    reference = {v: [s.probabilities for s in scoring.load_served(f, "tunegate", v, threads=1).score(SWAP_TEXTS, 1)]
                 for v, f in (("v1", first), ("v2", second))}
    assert not np.allclose(reference["v1"], reference["v2"], atol=1e-3), "the two versions must answer differently"
    source = StandInSource("v1", first)
    # Every request is queued (no refusal by count or by expected wait): this test is about the swap.
    app = create_app(serve_settings(tmp_path, max_queue_texts=1024, max_queue_wait_ms=600_000), tmp_path,
                     source=source)

    async def go():
        async with serving(app) as client:
            async def predict():
                return await client.post("/v1/predict", json={"texts": SWAP_TEXTS})

            # 100 requests admitted to v1, one every 2 ms while v2 loads, warms and swaps in, 10 after: 210+ in all.
            in_flight = [asyncio.create_task(predict()) for _ in range(100)]
            await asyncio.sleep(0)
            source.version, source.folder = "v2", second
            swap = asyncio.create_task(client.post("/v2/repository/models/tunegate/load"))
            while not swap.done() or len(in_flight) < 200:
                in_flight.append(asyncio.create_task(predict()))
                await asyncio.sleep(0.002)
            in_flight += [asyncio.create_task(predict()) for _ in range(10)]  # admitted after the swap
            answers = await asyncio.gather(*in_flight)
            after = [await predict() for _ in range(5)]
            return swap.result(), answers, after

    swap, answers, after = run(go())
    assert swap.json() == {"model_name": "tunegate", "model_version": "v2", "changed": True}
    assert [a.status_code for a in answers + after] == [200] * (len(answers) + 5)
    for answer in answers + after:
        version = answer.json()["model_version"]
        assert answer.headers["X-Model-Version"] == version
        got = [[p["probabilities"][k] for k in LABELS] for p in answer.json()["predictions"]]
        assert np.allclose(got, reference[version], atol=1e-4), f"a response names {version} but was not scored by it"
    assert {a.json()["model_version"] for a in after} == {"v2"}
    assert {a.json()["model_version"] for a in answers} == {"v1", "v2"}, "requests on both sides of the swap"


# ---------------------------------------------------------------- admission counts model work ahead


REVIEW_WORDS = ("the film was a gripping, beautiful mess of plot and character that never quite lands but still "
                "moves; its second act drags while the score soars over every scene").split()


def review(seed: int, chars: int) -> str:
    """A review-like text of exactly `chars` characters (seeded words)."""
    rng = np.random.default_rng(seed)
    words = rng.choice(REVIEW_WORDS, size=chars // 3 + 1)
    return " ".join(words)[:chars]


@pytest.fixture
def windowed_folder(served_folders, tmp_path) -> Path:
    """The tiny served folder reading long texts as sliding windows (every 7 tokens, up to 64 windows of 16 tokens),
    so a 20,000-character text costs 64 windows, as a long review does the default model."""
    import shutil

    folder = tmp_path / "windowed"
    shutil.copytree(served_folders[0], folder)
    serving = json.loads((folder / "serving.json").read_text())
    serving["long_text"] = {"rule": "window", "stride": 7, "aggregate": "mean_prob"}
    (folder / "serving.json").write_text(json.dumps(serving))
    return folder


@pytest.mark.heavy
def test_app_idle_service_serves_64_texts_of_the_longest_allowed_length(tmp_path, windowed_folder, monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    settings = serve_settings(tmp_path, model=str(windowed_folder))
    app = create_app(settings, tmp_path)
    longest = [review(i, settings.max_text_chars) for i in range(settings.max_texts)]
    sentence, answer, metrics = call(app, ("POST", "/v1/predict", {"json": {"texts": ["a fine film"]}}),
                                     ("POST", "/v1/predict", {"json": {"texts": longest}}), ("GET", "/metrics", {}))
    assert sentence.status_code == 200
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == settings.max_texts == 64
    assert metric(metrics.text, "tunegate_requests_refused_total", reason="queue_full") == 0
    assert metric(metrics.text, "tunegate_queue_tokens") == 0


@pytest.mark.heavy
def test_app_after_the_longest_allowed_text_a_one_sentence_request_on_the_idle_service_is_served(
        tmp_path, windowed_folder, monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    # A 1 ms bound: any work ahead refuses, so only "nothing ahead" admits (the learned rate cannot wedge it).
    settings = serve_settings(tmp_path, model=str(windowed_folder), max_queue_wait_ms=1)
    app = create_app(settings, tmp_path)
    longest = review(0, settings.max_text_chars)

    async def go():
        async with serving(app) as client:
            answers = []
            for texts in (["a fine film"], [longest], ["one short sentence"], [longest] * 64, ["and another"]):
                answers.append(await client.post("/v1/predict", json={"texts": texts}))
            return answers, app.state.service.batcher.rates

    answers, rates = run(go())
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers if a.status_code != 200]
    assert rates is not None and rates.per_token > 0


@pytest.mark.heavy
def test_app_eight_clients_sending_long_reviews_back_to_back_are_not_refused_while_the_wait_is_under_the_bound(
        tmp_path, windowed_folder, monkeypatch, record_property):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    settings = serve_settings(tmp_path, model=str(windowed_folder))  # the default bound (serve.max_queue_wait_ms)
    app = create_app(settings, tmp_path)
    reviews = [review(i, 1500 + 150 * i) for i in range(16)]  # ~600-1,000 tokens: 40-64 windows each
    seconds = 3.0

    async def go():
        async with serving(app) as client:
            batcher = app.state.service.batcher
            latency_ms, statuses, waits = [], [], []
            loop = asyncio.get_running_loop()
            until = loop.time() + seconds

            async def client_loop(c: int):
                i = c
                while loop.time() < until:
                    waits.append(batcher.wait_ahead_s())
                    started = loop.time()
                    answer = await client.post("/v1/predict", json={"texts": [reviews[i % len(reviews)]]})
                    latency_ms.append((loop.time() - started) * 1000)
                    statuses.append(answer.status_code)
                    i += 8

            await asyncio.gather(*(client_loop(c) for c in range(8)))
            return latency_ms, statuses, waits

    latency_ms, statuses, waits = run(go())
    p99 = float(np.percentile(latency_ms, 99))
    record_property("long_review_p99_ms", round(p99, 1))
    record_property("long_review_requests", len(statuses))
    bound_s = settings.max_queue_wait_ms / 1000
    assert max(waits) < bound_s, f"the wait reached {max(waits) * 1000:.0f} ms: this host is too slow for the scenario"
    assert statuses.count(429) == 0 and set(statuses) == {200}, f"{len(statuses)} requests, p99 {p99:.0f} ms"
    assert len(statuses) >= 16, "every client was served back to back"
