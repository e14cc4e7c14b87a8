"""Schema-driven fuzzing of `tunegate serve` (schemathesis against its own /openapi.json, in process, a real tiny
model): whatever it is sent, no answer is a 5xx, and every answer has a status, content type and body the schema
documents. Positive and negative (schema-violating) cases both."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tasks.serving.app import create_app
from tasks.serving.settings import API_KEYS_ENV
from tests.test_serve_app import serve_settings

EXAMPLES = 40  # per operation and mode: 7 x 40 = 280 cases at most (about 3 s)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def service_schema(served_folders, tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    # Small limits, so generated bodies reach them (413, 422) as well as the model.
    app = create_app(serve_settings(tmp_path, model=str(served_folders[0]), max_texts=8, max_text_chars=200,
                                    max_body_bytes=4096), tmp_path)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_serve_fuzz_no_5xx_and_answers_conform_to_the_schema(service_schema, mode):
    operations = [result.ok() for result in service_schema.get_all_operations()]
    assert len(operations) == 6
    seen: set[tuple[str, int]] = set()

    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to get wrong: no body, and any string is a valid {name}
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_conform(case):
            response = case.call_and_validate(checks=CHECKS)
            seen.add((operation.path, response.status_code))

        answers_conform()
    # The run reached the model, and bad bodies were refused (not merely sent).
    want = ("/v1/predict", 200) if mode is GenerationMode.POSITIVE else ("/v1/predict", 422)
    assert want in seen, sorted(seen)
