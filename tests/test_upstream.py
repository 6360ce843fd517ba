"""Upstream models through the gateway: pass-through, streaming, recorded turns, errors and retries.

One gateway serves the tiny local model and several upstream entries that point at a fake OpenAI-compatible
server on 127.0.0.1, so no request leaves the machine.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import AsyncOpenAI, OpenAI

from adapters.settings import BackendParams, ModelEntry
from tests.conftest import REDIS_URL, TINY_MODEL_NAME, RunningGateway, free_port, make_settings
from tests.fake_upstream import REPORTED_MODEL, FakeUpstream, reply_for, usage_for

# Without this, importing litellm downloads the model cost map from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

KEY_VARIABLE = "FAKE_UPSTREAM_KEY"
API_KEY = f"sk-fake-{secrets.token_hex(16)}"
TARGET = "upstream-model-v1"
HOSTED = "hosted-model"
NO_RETRY = "hosted-no-retry"
SHORT_TIMEOUT = "hosted-short-timeout"
DOWN = "hosted-down"
NO_API_BASE = "vllm-without-api-base"
VIA_LITELLM = "hosted-via-litellm"


def upstream_entry(name: str, model: str, api_base: str | None, **params: Any) -> ModelEntry:
    backend = BackendParams(model=model, api_base=api_base, api_key=f"os.environ/{KEY_VARIABLE}", **params)
    return ModelEntry(model_name=name, litellm_params=backend)


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(free_port()).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def module_key_prefix() -> Iterator[str]:
    """A key prefix shared by this module's gateway. Every key under it is deleted afterwards."""
    prefix = f"cgtest-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def gateway(
    fake_upstream: FakeUpstream,
    module_key_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_path: str,
    model_cache_dir: Path,
) -> Iterator[RunningGateway]:
    local = ModelEntry(model_name=TINY_MODEL_NAME, litellm_params=BackendParams(model=f"local/{tiny_model_path}"))
    base = fake_upstream.base_url
    upstreams = [
        upstream_entry(HOSTED, f"openai/{TARGET}", base, timeout=5, max_retries=1),
        upstream_entry(NO_RETRY, f"openai/{TARGET}", base, timeout=5, max_retries=0),
        upstream_entry(SHORT_TIMEOUT, f"openai/{TARGET}", base, timeout=0.5, max_retries=0),
        upstream_entry(DOWN, f"openai/{TARGET}", f"http://127.0.0.1:{free_port()}/v1", timeout=5, max_retries=1),
        upstream_entry(NO_API_BASE, f"hosted_vllm/{TARGET}", None),
        upstream_entry(VIA_LITELLM, f"custom_openai/{TARGET}", base, timeout=5, max_retries=0),
    ]
    settings = make_settings(
        key_prefix=module_key_prefix,
        tmp_path=tmp_path_factory.mktemp("upstream-gateway"),
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
        model_list=[local, *upstreams],
    )
    running = RunningGateway(settings).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_VARIABLE, API_KEY)
    return API_KEY


@pytest.fixture()
def fake(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture()
def partner() -> str:
    return f"partner-{secrets.token_hex(4)}"


def client_for(gateway: RunningGateway, partner: str) -> OpenAI:
    return OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, default_headers={"X-Partner-ID": partner}
    )


def post(gateway: RunningGateway, partner: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"X-Partner-ID": partner, **headers},
        timeout=30,
    )


def chat_body(model: str = HOSTED, content: str = "hello upstream", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def stream_events(gateway: RunningGateway, partner: str, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    """Returns the response and the payloads of its ``data:`` events, in order."""
    url = f"{gateway.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers={"X-Partner-ID": partner}, timeout=30) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    return response, events


def streamed_text(events: list[str]) -> str:
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk.get("choices"))


def sessions_of(gateway: RunningGateway, partner: str) -> list[dict[str, Any]]:
    return httpx.get(f"{gateway.base_url}/v1/partners/{partner}/sessions", timeout=10).json()["data"]


def turns_of(gateway: RunningGateway, partner: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Returns the partner's stored turns, waiting for non-streamed turns, which are written after the response."""
    deadline = time.monotonic() + timeout_s
    while True:
        turns = [turn for session in sessions_of(gateway, partner) for turn in session["turns"]]
        if turns or time.monotonic() > deadline:
            return turns
        time.sleep(0.05)


# --- Non-streaming ---


def test_openai_client_gets_upstream_reply(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    raw = client_for(gateway, partner).chat.completions.with_raw_response.create(
        model=HOSTED, messages=[{"role": "user", "content": "hi there"}]
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == "Echo: hi there"
    assert completion.model == REPORTED_MODEL
    assert raw.headers["x-adapter"] == "none"
    assert raw.headers["x-request-id"] == completion.id
    assert raw.headers["x-session-id"].startswith("sess-")


async def test_async_openai_client_gets_reply(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    client = AsyncOpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, default_headers={"X-Partner-ID": partner}
    )
    completion = await client.chat.completions.create(model=HOSTED, messages=[{"role": "user", "content": "async hi"}])
    await client.close()

    assert completion.choices[0].message.content == "Echo: async hi"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_upstream_receives_target_and_fields(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    response = post(gateway, partner, chat_body(temperature=0.3, tools=[tool], top_k=5))
    received = fake.requests[-1]

    assert response.status_code == 200
    assert received.body["model"] == TARGET
    assert received.body["temperature"] == 0.3
    assert received.body["tools"] == [tool]
    assert received.body["top_k"] == 5
    assert "max_tokens" not in received.body


def test_api_key_sent_as_bearer(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    post(gateway, partner, chat_body())

    assert fake.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-partner-id" not in fake.requests[-1].headers


def test_response_body_passes_unchanged(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    body = post(gateway, partner, chat_body(content="exact bytes")).json()

    assert body["system_fingerprint"] == "fp_fake_upstream"
    assert body["usage"] == usage_for([{"role": "user", "content": "exact bytes"}], "Echo: exact bytes")


def test_several_choices_record_first(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response = post(gateway, partner, chat_body(content="pick one", n=2))
    turn = turns_of(gateway, partner)[0]

    assert response.status_code == 200
    assert len(response.json()["choices"]) == 2
    assert turn["response"]["content"] == "Echo: pick one"


# --- Recorded turns ---


def test_turn_recorded_with_upstream_model(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "record this"}]
    response = post(gateway, partner, {"model": HOSTED, "messages": messages})
    turns = turns_of(gateway, partner)
    turn = turns[0]

    assert len(turns) == 1
    assert turn["model"] == REPORTED_MODEL
    assert turn["adapter"] is None
    assert turn["trainable"] is True
    assert turn["messages"] == messages
    assert turn["response"] == {"role": "assistant", "content": "Echo: record this"}
    assert turn["finish_reason"] == "stop"
    assert turn["usage"] == usage_for(messages, "Echo: record this")
    assert turn["request_id"] == response.headers["x-request-id"]
    assert turn["session_id"] == response.headers["x-session-id"]


def test_anonymous_upstream_turn_not_trainable(gateway: RunningGateway, fake: FakeUpstream) -> None:
    marker = f"anonymous {secrets.token_hex(4)}"
    httpx.post(f"{gateway.base_url}/v1/chat/completions", json=chat_body(content=marker), timeout=30)
    turns = [turn for turn in turns_of(gateway, "anonymous") if turn["messages"][0]["content"] == marker]

    assert len(turns) == 1
    assert turns[0]["trainable"] is False


def test_follow_up_continues_session(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    first = post(gateway, partner, chat_body(content="first question"))
    reply = first.json()["choices"][0]["message"]["content"]
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "second question"},
    ]
    second = post(gateway, partner, {"model": HOSTED, "messages": messages})

    assert second.headers["x-session-id"] == first.headers["x-session-id"]
    assert sessions_of(gateway, partner)[0]["turn_count"] == 2


def test_session_header_names_session(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response = post(gateway, partner, chat_body(), **{"X-Session-ID": "my-session-1"})

    assert response.headers["x-session-id"] == "my-session-1"
    assert sessions_of(gateway, partner)[0]["id"] == "my-session-1"


def test_api_key_never_stored_or_logged(
    gateway: RunningGateway, fake: FakeUpstream, partner: str, module_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post(gateway, partner, chat_body(content="keep my key secret"))
    fake.fail_next("bad_request", "server_error", "server_error")
    post(gateway, partner, chat_body(model=NO_RETRY))
    post(gateway, partner, chat_body(model=HOSTED))
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    stored = [client.dump(key) or b"" for key in client.scan_iter(match=f"{module_key_prefix}:*{partner}*")]
    client.close()

    assert stored
    assert all(API_KEY.encode() not in value for value in stored)
    assert "failed with 500" in caplog.text
    assert API_KEY not in caplog.text


# --- Streaming ---


def test_stream_passes_chunks_and_done(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response, events = stream_events(gateway, partner, chat_body(content="stream these words", stream=True))
    chunks = [json.loads(event) for event in events[:-1]]

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    assert len(chunks) >= 5
    assert streamed_text(events) == "Echo: stream these words"
    assert {chunk["model"] for chunk in chunks} == {REPORTED_MODEL}
    assert response.headers["x-request-id"] == chunks[0]["id"]


def test_stream_hides_unrequested_usage(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    _, events = stream_events(gateway, partner, chat_body(stream=True))
    chunks = [json.loads(event) for event in events[:-1]]

    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(chunk["choices"] for chunk in chunks)


def test_stream_includes_requested_usage(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    body = chat_body(content="count me", stream=True, stream_options={"include_usage": True})
    _, events = stream_events(gateway, partner, body)
    last = json.loads(events[-2])

    assert last["choices"] == []
    assert last["usage"] == usage_for(body["messages"], "Echo: count me")


def test_stream_chunks_arrive_incrementally(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.chunk_delay_s = 0.3
    url = f"{gateway.base_url}/v1/chat/completions"
    body = chat_body(content="one two three", stream=True)
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("POST", url, json=body, headers={"X-Partner-ID": partner}, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)

    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] >= 1.0


def test_openai_client_streams_upstream(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    stream = client_for(gateway, partner).chat.completions.create(
        model=HOSTED, messages=[{"role": "user", "content": "via sdk"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert text == "Echo: via sdk"


def test_streamed_turn_records_usage(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    body = chat_body(content="streamed turn", stream=True)
    stream_events(gateway, partner, body)
    turn = turns_of(gateway, partner)[0]

    assert turn["model"] == REPORTED_MODEL
    assert turn["response"]["content"] == "Echo: streamed turn"
    assert turn["finish_reason"] == "stop"
    assert turn["usage"] == usage_for(body["messages"], "Echo: streamed turn")


def test_broken_stream_sends_error_event(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("stream_break")
    response, events = stream_events(gateway, partner, chat_body(model=NO_RETRY, stream=True))
    error = json.loads(events[-2])["error"]

    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    assert error["code"] == "upstream_unavailable"
    assert turns_of(gateway, partner) == []


def test_stream_rate_limit_keeps_status(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("rate_limit")
    response, _ = stream_events(gateway, partner, chat_body(stream=True))

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


# --- Errors and retries ---


def test_rate_limit_passes_retry_after(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("rate_limit")
    with pytest.raises(openai.RateLimitError) as raised:
        client_for(gateway, partner).chat.completions.create(
            model=HOSTED, messages=[{"role": "user", "content": "too fast"}]
        )

    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body["type"] == "rate_limit_error"
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert raised.value.body["param"] is None
    assert len(fake.requests) == 1


def test_short_retry_after_is_retried(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.retry_after = "0.1"
    fake.fail_next("unavailable")
    response = post(gateway, partner, chat_body())

    assert response.status_code == 200
    assert len(fake.requests) == 2


def test_bad_request_passes_envelope(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("bad_request")
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(gateway, partner).chat.completions.create(
            model=NO_RETRY, messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )

    assert raised.value.status_code == 400
    assert raised.value.body["message"] == "Invalid value for 'temperature': must be at most 2."
    assert raised.value.body["type"] == "invalid_request_error"
    assert raised.value.body["param"] == "temperature"
    assert raised.value.body["code"] == "invalid_value"
    assert turns_of(gateway, partner) == []


def test_upstream_auth_failure_returns_502(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("unauthorized")
    response = post(gateway, partner, chat_body(model=NO_RETRY))
    error = response.json()["error"]

    assert response.status_code == 502
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_authentication_failed"
    assert error["param"] is None


def test_server_error_retried_once(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("server_error")
    response = post(gateway, partner, chat_body(content="after a retry"))

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: after a retry"
    assert len(fake.requests) == 2
    assert len(turns_of(gateway, partner)) == 1


def test_server_errors_exhaust_retries(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("server_error", "server_error")
    response = post(gateway, partner, chat_body())

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "upstream_error"
    assert len(fake.requests) == 2


def test_closed_connection_is_retried(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("disconnect")
    response = post(gateway, partner, chat_body())

    assert response.status_code == 200
    assert len(fake.requests) == 2


def test_upstream_down_returns_502(gateway: RunningGateway, partner: str) -> None:
    response = post(gateway, partner, chat_body(model=DOWN))
    error = response.json()["error"]

    assert response.status_code == 502
    assert error["code"] == "upstream_unavailable"
    assert error["type"] == "server_error"
    assert error["param"] is None
    assert DOWN in error["message"]


def test_slow_upstream_returns_504(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("hang")
    started = time.monotonic()
    response = post(gateway, partner, chat_body(model=SHORT_TIMEOUT))
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert response.json()["error"]["param"] is None
    assert elapsed < 2.5


def test_missing_key_variable_returns_502(
    gateway: RunningGateway, fake: FakeUpstream, partner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_VARIABLE)
    response = post(gateway, partner, chat_body())
    error = response.json()["error"]

    assert response.status_code == 502
    assert error["code"] == "upstream_not_configured"
    assert KEY_VARIABLE in error["message"]
    assert fake.requests == []


def test_missing_api_base_returns_502(gateway: RunningGateway, partner: str) -> None:
    response = post(gateway, partner, chat_body(model=NO_API_BASE))
    error = response.json()["error"]

    assert response.status_code == 502
    assert error["code"] == "upstream_not_configured"
    assert NO_API_BASE in error["message"]


def test_error_response_names_request_id(
    gateway: RunningGateway, partner: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.upstream")
    response = post(gateway, partner, chat_body(model=DOWN))
    request_id = response.headers["x-request-id"]
    lines = [record.getMessage() for record in caplog.records if request_id in record.getMessage()]

    assert len(lines) == 1
    assert partner in lines[0]
    assert DOWN in lines[0]


# --- litellm ---


def test_litellm_client_reaches_upstream_model(gateway: RunningGateway, fake: FakeUpstream) -> None:
    import litellm

    response = litellm.completion(
        model=f"openai/{HOSTED}",
        api_base=f"{gateway.base_url}/v1",
        api_key="x",
        messages=[{"role": "user", "content": "from litellm"}],
    )

    assert response.choices[0].message.content == "Echo: from litellm"
    assert response.model.endswith(REPORTED_MODEL)


def test_litellm_backend_completes_and_records(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response = post(gateway, partner, chat_body(model=VIA_LITELLM, content="through litellm"))
    turn = turns_of(gateway, partner)[0]

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: through litellm"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    assert turn["model"] == REPORTED_MODEL
    assert turn["usage"]["completion_tokens"] == 3


def test_litellm_backend_streams_and_records(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    body = chat_body(model=VIA_LITELLM, content="litellm stream", stream=True)
    response, events = stream_events(gateway, partner, body)
    turn = turns_of(gateway, partner)[0]

    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == reply_for(body["messages"])
    assert all(json.loads(event).get("usage") is None for event in events[:-1])
    assert turn["response"]["content"] == "Echo: litellm stream"
    assert turn["usage"] == usage_for(body["messages"], "Echo: litellm stream")


def test_litellm_backend_maps_rate_limit(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    fake.fail_next("rate_limit")
    response = post(gateway, partner, chat_body(model=VIA_LITELLM))

    assert response.status_code == 429
    assert response.headers.get("retry-after") == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_litellm_backend_rejects_unknown_field(gateway: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response = post(gateway, partner, chat_body(model=VIA_LITELLM, base_url="http://127.0.0.1:9/v1"))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "base_url"
    assert fake.requests == []


# --- Session store down ---


@pytest.fixture()
def gateway_without_redis(
    fake_upstream: FakeUpstream, tmp_path: Path, tiny_model_path: str, model_cache_dir: Path
) -> Iterator[RunningGateway]:
    """A gateway whose Redis URL points at a closed port, so it serves requests but never becomes ready."""
    local = ModelEntry(model_name=TINY_MODEL_NAME, litellm_params=BackendParams(model=f"local/{tiny_model_path}"))
    settings = make_settings(
        key_prefix=f"cgtest-{secrets.token_hex(6)}",
        tmp_path=tmp_path,
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
        model_list=[local, upstream_entry(HOSTED, f"openai/{TARGET}", fake_upstream.base_url, max_retries=0)],
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    running = RunningGateway(settings)
    running.thread.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{running.base_url}/healthz", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield running
    running.stop()


def test_store_down_buffers_turn(gateway_without_redis: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response = post(gateway_without_redis, partner, chat_body())
    writer = gateway_without_redis.server.config.app.state.services.turn_writer
    deadline = time.monotonic() + 10
    while not writer.buffered and time.monotonic() < deadline:
        time.sleep(0.05)

    assert response.status_code == 200
    assert [turn["partner_id"] for turn in writer.buffered] == [partner]


def test_store_down_stream_sends_error(gateway_without_redis: RunningGateway, fake: FakeUpstream, partner: str) -> None:
    response, events = stream_events(gateway_without_redis, partner, chat_body(content="not stored", stream=True))

    assert response.status_code == 200
    assert streamed_text(events[:-2]) == "Echo: not stored"
    assert json.loads(events[-2])["error"]["code"] == "store_unavailable"
    assert json.loads(events[-2])["error"]["type"] == "server_error"
    assert events[-1] == "[DONE]"
