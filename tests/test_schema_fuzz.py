"""Schema fuzzing: schemathesis sends generated requests for every operation in the gateway's OpenAPI document.

No response may be a 500, and every error body must be in OpenAI's envelope.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.transport.serialization import serialize_binary

from adapters.settings import Settings
from gateway.app import create_app
from tests.conftest import REDIS_URL, TINY_MODEL_NAME, RunningGateway, delete_test_keys, make_settings

ENVELOPE_KEYS = {"message", "type", "param", "code"}
# The OpenAPI document does not depend on settings, and building the app runs nothing until start-up.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schemathesis.serializer("application/zip", "application/gzip", "application/x-tar")
def archive_serializer(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """Sends generated bodies of the adapter import route as raw bytes, as a client uploading a file would."""
    return serialize_binary(value)


@pytest.fixture(scope="module")
def fuzz_gateway(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: str, model_cache_dir: Path
) -> Iterator[RunningGateway]:
    prefix = f"cgtest-{secrets.token_hex(6)}"
    fuzz_settings = make_settings(
        key_prefix=prefix,
        tmp_path=tmp_path_factory.mktemp("fuzz"),
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
        default_max_tokens=4,
    )
    running = RunningGateway(fuzz_settings).start()
    yield running
    running.stop()

    client = redis.Redis.from_url(REDIS_URL)
    delete_test_keys(client, prefix)
    client.close()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_500_and_openai_envelope(case: schemathesis.Case, fuzz_gateway: RunningGateway) -> None:
    # A random model name stops every request at the 404; the served name lets the rest of the body be tested.
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = TINY_MODEL_NAME
    response = case.call(base_url=fuzz_gateway.base_url, timeout=60)

    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == ENVELOPE_KEYS, response.text
        assert isinstance(error["message"], str)
