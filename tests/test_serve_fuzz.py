"""Schema-driven fuzzing of `tunegate serve` (schemathesis against its own /openapi.json, in process, a real tiny
model): whatever it is sent, no answer is a 5xx, and every answer has a status, content type and body the schema
documents. Positive and negative (schema-violating) cases both. Then a property over sequences of request sizes:
an idle service admits every request."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.runtime.settings import API_KEYS_ENV
from tasks.serving import scoring
from tasks.serving.app import create_app
from tasks.serving.scoring import TextScore
from tests.test_serve_app import StandInModel, StandInSource, run, serve_settings, serving

EXAMPLES = 40  # per operation and mode: 7 x 40 = 280 cases at most (about 3 s)
# schemathesis is imported by the two tests that use it (about a second of import): not by every worker that
# collects this module.


@pytest.fixture
def service_schema(served_folders, tmp_path, monkeypatch):
    import schemathesis

    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    # Small limits, so generated bodies reach them (413, 422) as well as the model.
    app = create_app(serve_settings(tmp_path, model=str(served_folders[0]), max_texts=8, max_text_chars=200,
                                    max_body_bytes=4096), tmp_path)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", ["positive", "negative"])  # schemathesis's GenerationMode values
@pytest.mark.heavy
def test_serve_fuzz_no_5xx_and_answers_conform_to_the_schema(service_schema, mode):
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    mode = GenerationMode(mode)
    operations = [result.ok() for result in service_schema.get_all_operations()]
    assert len(operations) == 6
    seen: set[tuple[str, int]] = set()

    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to get wrong: no body, and any string is a valid {name}
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_conform(case):
            response = case.call_and_validate(checks=checks)
            seen.add((operation.path, response.status_code))

        answers_conform()
    # The run reached the model, and bad bodies were refused (not merely sent).
    want = ("/v1/predict", 200) if mode is GenerationMode.POSITIVE else ("/v1/predict", 422)
    assert want in seen, sorted(seen)


# ---------------------------------------------------------------- admission: an idle service always serves

MAX_TEXTS, MAX_CHARS = 64, 20_000  # serve.max_texts, serve.max_text_chars (the defaults)
STALL = "!"  # a text starting with it makes its model call take STALL_S: the learned time per token jumps
STALL_S = 0.02

# (texts, characters each, whether one of them stalls its model call)
request_sizes = st.tuples(st.integers(1, MAX_TEXTS), st.integers(0, MAX_CHARS), st.booleans())


class StallingModel(StandInModel):
    """A ServedModel stand-in whose texts cost one model token per character; a call holding a STALL text takes
    STALL_S (a slow spell: on a 1-character text that is ~7 ms per token, 100x a real model)."""

    def read(self, texts: list[str]) -> list[SimpleNamespace]:
        return [SimpleNamespace(text=t, cost=len(t) + 2) for t in texts]

    def score(self, texts: list[str], max_batch_size: int) -> list[TextScore]:
        if any(t.startswith(STALL) for t in texts):
            time.sleep(STALL_S)
        return super().score(texts, max_batch_size)


def texts_of(size: tuple[int, int, bool]) -> list[str]:
    count, chars, stall = size
    texts = ["x" * chars] * count
    return [STALL + texts[0][1:] if chars else STALL, *texts[1:]] if stall else texts


@pytest.mark.e2e  # 25 sequences of concurrent bursts through the app, some stalling (5 s or more): out of the quick loop
@given(steps=st.lists(st.tuples(st.lists(request_sizes, min_size=1, max_size=6), request_sizes), min_size=1,
                      max_size=3))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_serve_idle_service_always_admits_whatever_came_before(steps, tmp_path_factory, monkeypatch):
    """Bursts of concurrent requests of any size (some stalling the model, so the learned time per token swings),
    each followed by a request of any size on the then idle service: every burst answer is 200 or 429 (refusals
    are allowed while work is ahead), and every request with nothing ahead of it is 200, however tight the bound."""
    model = StallingModel()
    monkeypatch.setattr(scoring, "load_served", lambda *args: model)
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    tmp = tmp_path_factory.mktemp("idle")
    app = create_app(serve_settings(tmp, max_queue_wait_ms=1, max_texts=MAX_TEXTS, max_text_chars=MAX_CHARS),
                     tmp, source=StandInSource())

    async def go():
        async with serving(app) as client:
            batcher = app.state.service.batcher
            outcomes = []
            for burst, alone in steps:
                answers = await asyncio.gather(*(client.post("/v1/predict", json={"texts": texts_of(size)})
                                                 for size in burst))
                idle = (batcher.queued_texts, batcher.wait_ahead_s())
                probe = await client.post("/v1/predict", json={"texts": texts_of(alone)})
                outcomes.append(([a.status_code for a in answers], idle, probe.status_code, probe.text))
            return outcomes

    for burst_statuses, idle, probe_status, probe_text in run(go()):
        assert set(burst_statuses) <= {200, 429}
        assert idle == (0, 0.0), "a burst's answers are all in: nothing is ahead of the next request"
        assert probe_status == 200, probe_text
