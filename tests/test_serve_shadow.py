"""Shadow evaluation by mirroring (serve.shadow): a sampled share of served texts is also scored by a candidate, after
prod's answer and never in its way; both answers are logged as one shadow record, which prod's readers ignore."""

import asyncio
import hashlib
import logging
import threading
import time

import pytest

from tasks.core.config import ConfigError
from tasks.runtime.settings import API_KEYS_ENV, load_serve_settings
from tasks.serving import scoring
from tasks.serving.app import create_app
from tasks.serving.metrics import ServiceMetrics
from tasks.runtime.prediction_log import read_all_records, read_prediction_log, read_shadow_log
from tasks.serving.predlog import PredictionLog
from tasks.serving.scoring import TextScore
from tasks.serving.shadow import IDLE_SETTLE_S, Mirror, sampled
from tests.conftest import REPO
from tests.test_serve_app import StandInModel, StandInSource, metric, run, serve_settings, serving

TEXTS = [f"review {i}: a {'good' if i % 3 else 'dull'} film{' and great' * (i % 2)}" for i in range(120)]


class ShadowStandIn(StandInModel):
    """A candidate that reads differently from prod's stand-in: positive when "great" is in the text."""

    def score(self, texts, max_batch_size):
        self.calls.append(list(texts))
        self.called_at = [*getattr(self, "called_at", []), time.monotonic()]
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        return [TextScore(label="positive" if "great" in t else "negative",
                          probabilities=[0.3, 0.7] if "great" in t else [0.6, 0.4], tokens=3, read_tokens=3,
                          unknown_tokens=0) for t in texts]


class FailingShadow(StandInModel):
    def score(self, texts, max_batch_size):
        raise RuntimeError("the candidate's session broke")


@pytest.fixture
def models(monkeypatch):
    """load_served replaced: versions starting with "shadow" load as ShadowStandIn (threads recorded), others as
    prod's StandInModel; `loaders` lets a test choose another class or make a load block or fail."""
    loaded: dict[str, StandInModel] = {}
    threads: dict[str, int] = {}
    loaders = {"shadow": ShadowStandIn}
    gate = {"load": None}

    def load(folder, name, version, n_threads):
        threads[version] = n_threads
        if version.startswith("shadow"):
            if gate["load"] is not None:
                assert gate["load"].wait(timeout=30), "load gate never opened"
            return loaded.setdefault(version, loaders["shadow"](version))
        return loaded.setdefault(version, StandInModel(version))

    monkeypatch.setattr(scoring, "load_served", load)
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    return {"loaded": loaded, "threads": threads, "loaders": loaders, "gate": gate}


def shadowed_app(tmp_path, shadow_source=None, **flags):
    settings = serve_settings(tmp_path, **{"shadow": "candidate", "shadow_share": 0.5, **flags})
    return create_app(settings, tmp_path, source=StandInSource("v1"),
                      shadow_source=shadow_source or StandInSource("shadow-v1"))


async def post_all(client, texts, per_request=10):
    return [await client.post("/v1/predict", json={"texts": texts[i:i + per_request]})
            for i in range(0, len(texts), per_request)]


async def settled(client, seconds=20.0) -> str:
    """/metrics once every mirrored text is scored, dropped or failed (the shadow runs on its own thread)."""
    deadline = time.monotonic() + seconds
    while True:
        text = (await client.get("/metrics")).text
        done = sum(metric(text, name) for name in ("tunegate_shadow_scored_total", "tunegate_shadow_failed_total"))
        done += sum(metric(text, "tunegate_shadow_dropped_total", reason=r)
                    for r in ("queue_full", "unavailable", "stopping"))
        if done >= metric(text, "tunegate_shadow_mirrored_total") or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.02)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- sampling


def test_sampling_by_text_hash_is_reproducible_and_takes_the_share():
    shas = [sha(f"text {i}") for i in range(4000)]
    assert not any(sampled(s, 0.0) for s in shas) and all(sampled(s, 1.0) for s in shas)
    share = sum(sampled(s, 0.25) for s in shas) / len(shas)
    assert share == pytest.approx(0.25, abs=0.03)
    assert [sampled(s, 0.25) for s in shas] == [sampled(s, 0.25) for s in shas]
    assert all(sampled(s, 0.5) for s in shas if sampled(s, 0.25)), "a larger share keeps the smaller one's texts"


# ---------------------------------------------------------------- the service


def test_mirrored_texts_are_logged_beside_prods_answer_with_the_sampled_share(tmp_path, models):
    app = shadowed_app(tmp_path, shadow_share=0.5)

    async def go():
        async with serving(app) as client:
            answers = await post_all(client, TEXTS)
            return answers, await settled(client)

    answers, metrics = run(go())
    assert all(a.status_code == 200 for a in answers)
    prod_labels = {sha(t): p["label"] for a, i in zip(answers, range(0, len(TEXTS), 10))
                   for t, p in zip(TEXTS[i:i + 10], a.json()["predictions"])}
    chosen = [t for t in TEXTS if sampled(sha(t), 0.5)]
    assert 0.35 < len(chosen) / len(TEXTS) < 0.65
    records = read_shadow_log(tmp_path / "predictions")
    assert sorted(r["text_sha256"] for r in records) == sorted(sha(t) for t in chosen), "exactly the sampled texts"
    for record in records:
        assert record["prod"]["version"] == "v1" and record["shadow"]["version"] == "shadow-v1"
        assert record["prod"]["label"] == prod_labels[record["text_sha256"]]
        assert set(record["shadow"]) == {"version", "label", "confidence", "probabilities"}
        assert record["agree"] is (record["prod"]["label"] == record["shadow"]["label"])
        assert record["delay_s"] >= 0
    disagreeing = sum(not r["agree"] for r in records)
    assert 0 < disagreeing < len(records), "the stand-ins read differently on some texts"
    assert metric(metrics, "tunegate_shadow_mirrored_total") == len(chosen)
    assert metric(metrics, "tunegate_shadow_scored_total") == len(chosen)
    assert metric(metrics, "tunegate_shadow_disagreements_total") == disagreeing
    assert metric(metrics, "tunegate_shadow_version_info", version="shadow-v1") == 1
    assert models["threads"]["shadow-v1"] == 1, "the shadow runs on a 1-thread onnxruntime session"
    assert all(len(call) == 1 for call in models["loaded"]["shadow-v1"].calls), "one text per shadow call"
    assert len(read_prediction_log(tmp_path / "predictions")) == len(TEXTS), "prod's records: one per text"


def test_prods_answers_and_records_are_the_same_with_and_without_a_shadow(tmp_path, models):
    def serve(folder, **flags):
        app = create_app(serve_settings(folder, **flags), folder, source=StandInSource("v1"),
                         shadow_source=StandInSource("shadow-v1"))

        async def go():
            async with serving(app) as client:
                answers = await post_all(client, TEXTS)
                await settled(client)
                return answers

        answers = run(go())
        records = [{k: v for k, v in r.items() if k != "time"} for r in read_prediction_log(folder / "predictions")]
        return [(a.status_code, a.headers["X-Model-Version"], a.json()) for a in answers], records

    (tmp_path / "plain").mkdir()
    (tmp_path / "mirrored").mkdir()
    plain = serve(tmp_path / "plain")
    mirrored = serve(tmp_path / "mirrored", shadow="candidate", shadow_share=1.0)
    assert mirrored == plain
    assert len(read_shadow_log(tmp_path / "mirrored" / "predictions")) == len(TEXTS)
    assert read_shadow_log(tmp_path / "plain" / "predictions") == []


def test_a_shadow_that_raises_fails_no_request_is_counted_and_logged_once(tmp_path, models, caplog):
    models["loaders"]["shadow"] = FailingShadow
    app = shadowed_app(tmp_path, shadow_share=1.0)

    async def go():
        async with serving(app) as client:
            answers = await post_all(client, TEXTS[:40])
            return answers, await settled(client)

    with caplog.at_level(logging.WARNING, logger="tasks.serving"):
        answers, metrics = run(go())
    assert [a.status_code for a in answers] == [200] * 4
    assert metric(metrics, "tunegate_shadow_failed_total") == 40
    assert metric(metrics, "tunegate_shadow_scored_total") == 0
    warnings = [r for r in caplog.records if "shadow score failed" in r.getMessage()]
    assert len(warnings) == 1 and "session broke" in warnings[0].getMessage()
    assert read_shadow_log(tmp_path / "predictions") == []
    assert len(read_prediction_log(tmp_path / "predictions")) == 40


def test_a_shadow_that_cannot_load_leaves_the_service_serving_and_drops_counted(tmp_path, models, caplog):
    broken = StandInSource("shadow-v1")
    broken.error = "no served folder at candidate"
    app = shadowed_app(tmp_path, shadow_source=broken, shadow_share=1.0)

    async def go():
        async with serving(app) as client:
            await asyncio.sleep(0.2)  # the shadow loads (and fails) on its own thread, after prod is ready
            answers = await post_all(client, TEXTS[:20])
            return answers, await settled(client), (await client.get("/v2/health/ready")).status_code

    with caplog.at_level(logging.WARNING, logger="tasks.serving"):
        answers, metrics, ready = run(go())
    assert [a.status_code for a in answers] == [200, 200] and ready == 200
    assert metric(metrics, "tunegate_shadow_load_failures_total") == 1
    assert metric(metrics, "tunegate_shadow_dropped_total", reason="unavailable") == 20
    assert "no served folder at candidate" in caplog.text


def test_a_full_shadow_queue_drops_and_counts_and_never_holds_a_response(tmp_path, models):
    load = models["gate"]["load"] = threading.Event()  # the shadow is stuck loading: nothing leaves its queue
    app = shadowed_app(tmp_path, shadow_share=1.0, shadow_queue_texts=3)

    async def go():
        async with serving(app) as client:
            started = time.monotonic()
            answers = await post_all(client, TEXTS[:10])
            answered_s = time.monotonic() - started
            before = (await client.get("/metrics")).text
            load.set()
            return answers, answered_s, before, await settled(client)

    answers, answered_s, before, after = run(go())
    assert answers[0].status_code == 200 and answered_s < 5, "prod answered while the shadow was stuck"
    assert metric(before, "tunegate_shadow_dropped_total", reason="queue_full") == 7
    assert metric(before, "tunegate_shadow_queue_texts") == 3
    assert metric(after, "tunegate_shadow_scored_total") == 3
    assert len(read_shadow_log(tmp_path / "predictions")) == 3


def test_the_shadow_follows_its_source_when_it_moves(tmp_path, models):
    source = StandInSource("shadow-v1")
    app = shadowed_app(tmp_path, shadow_source=source, shadow_share=1.0, reload_seconds=0.05)

    async def go():
        async with serving(app) as client:
            await post_all(client, TEXTS[:10])
            await settled(client)
            source.version = "shadow-v2"
            await asyncio.sleep(0.3)
            await post_all(client, TEXTS[10:20])
            return await settled(client)

    metrics = run(go())
    versions = [r["shadow"]["version"] for r in read_shadow_log(tmp_path / "predictions")]
    assert versions == ["shadow-v1"] * 10 + ["shadow-v2"] * 10
    assert metric(metrics, "tunegate_shadow_version_info", version="shadow-v2") == 1
    assert metric(metrics, "tunegate_shadow_version_info", version="shadow-v1") == 0


# ---------------------------------------------------------------- the mirror alone


def test_the_shadow_scores_only_while_prod_is_idle(tmp_path, models):
    plog = PredictionLog(tmp_path, log_texts=False, file_mb=1.0, max_mb=8.0, flush_seconds=0.05)
    plog.start()
    idle_since = {"t": None}  # None: prod is busy

    def prod_idle_s() -> float:
        return 0.0 if idle_since["t"] is None else time.monotonic() - idle_since["t"]

    metrics = ServiceMetrics()
    mirror = Mirror(lambda: StandInSource("shadow-v1"), share=1.0, queue_texts=16, name="tunegate", reload_seconds=0,
                    prod_idle_s=prod_idle_s, predlog=plog, observer=metrics)
    mirror.start()
    try:
        score = TextScore(label="positive", probabilities=[0.2, 0.8], tokens=3, read_tokens=3, unknown_tokens=0)
        mirror.offer("v1", ["a good film", "and great"], [score, score], ["negative", "positive"])
        time.sleep(0.3)
        assert mirror._model is not None and mirror._model.calls == [], "prod is busy: the shadow waits"
        idle_since["t"] = time.monotonic()
        deadline = time.monotonic() + 10
        while len(mirror._model.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mirror._model.calls == [["a good film"], ["and great"]]
        assert mirror._model.called_at[0] - idle_since["t"] >= IDLE_SETTLE_S, "only after prod's lull has lasted"
    finally:
        mirror.stop(5)
        plog.close()
    assert [r["shadow"]["label"] for r in read_shadow_log(tmp_path)] == ["negative", "positive"]


def test_prods_readers_leave_shadow_records_out(tmp_path):
    plog = PredictionLog(tmp_path, log_texts=False, file_mb=1.0, max_mb=8.0, flush_seconds=3600)
    plog.start()
    score = TextScore(label="positive", probabilities=[0.2, 0.8], tokens=3, read_tokens=3, unknown_tokens=0)
    plog.append("v1", ["a", "b"], [score, score], ["negative", "positive"])
    answer = {"version": "v1", "label": "positive", "confidence": 0.8, "probabilities": {"positive": 0.8}}
    plog.append_record({"time": time.time(), "kind": "shadow", "text_sha256": sha("a"), "chars": 1, "prod": answer,
                        "shadow": {**answer, "version": "v2", "label": "negative"}, "agree": False, "delay_s": 0.1})
    plog.close()
    prod = read_prediction_log(tmp_path)
    assert len(prod) == 2 and all("kind" not in r and r["model_version"] == "v1" for r in prod)
    (shadow,) = read_shadow_log(tmp_path)
    assert shadow["shadow"]["version"] == "v2" and len(read_all_records(tmp_path)) == 3


def test_the_monitor_reads_prods_records_only():
    monitoring = pytest.importorskip("flows.monitoring")
    assert monitoring.read_prediction_log is read_prediction_log


# ---------------------------------------------------------------- settings


def test_shadow_settings_come_from_params_env_and_flags_and_are_checked(tmp_path, monkeypatch):
    params = load_serve_settings(REPO / "params.yaml", {})
    assert params.shadow is None and 0 <= params.shadow_share <= 1 and params.shadow_queue_texts >= 1
    monkeypatch.setenv("TUNEGATE_SHADOW", "registry:staging")
    monkeypatch.setenv("TUNEGATE_SHADOW_SHARE", "0.25")
    env = load_serve_settings(REPO / "params.yaml", {})
    assert (env.shadow, env.shadow_share) == ("registry:staging", 0.25)
    assert load_serve_settings(REPO / "params.yaml", {"shadow": "artifacts/export/onnx"}).shadow == \
        "artifacts/export/onnx"
    with pytest.raises(ConfigError, match="shadow_share"):
        load_serve_settings(REPO / "params.yaml", {"shadow_share": 1.5})
    with pytest.raises(ConfigError, match="shadow_queue_texts"):
        load_serve_settings(REPO / "params.yaml", {"shadow_queue_texts": 0})


def test_serve_takes_the_shadow_flags():
    import argparse

    from flows.cli.serving import add_serve_flags

    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    args = parser.parse_args(["--shadow", "registry:staging", "--shadow-share", "0.2", "--shadow-queue-texts", "9"])
    assert (args.shadow, args.shadow_share, args.shadow_queue_texts) == ("registry:staging", 0.2, 9)
