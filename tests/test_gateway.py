"""The gateway over HTTP with the official openai client, on a tiny random-weight model and a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from adapters.settings import Settings
from tests.conftest import TINY_MODEL_NAME, RunningGateway


def client_for(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


def chat(gateway: RunningGateway, partner: str | None, messages: list[dict[str, str]], **extra: object) -> object:
    headers = {"X-Partner-ID": partner} if partner else {}
    return client_for(gateway).chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=8, temperature=0, extra_headers=headers, **extra
    )


def test_chat_non_streaming_answers(gateway: RunningGateway) -> None:
    raw = chat(gateway, "alice", [{"role": "user", "content": "Hello there"}])
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-adapter"] == "none"


def test_chat_streaming_ends_with_done(gateway: RunningGateway) -> None:
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert '"usage": {"prompt_tokens"' in lines[-2]


def test_streamed_text_matches_non_streamed(gateway: RunningGateway) -> None:
    messages = [{"role": "user", "content": "Count with me"}]
    full = chat(gateway, "bob", messages).parse().choices[0].message.content
    stream = client_for(gateway).chat.completions.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert streamed == full


def test_models_list_has_served_model(gateway: RunningGateway) -> None:
    models = client_for(gateway).models.list()

    assert [model.id for model in models.data] == [TINY_MODEL_NAME]


def test_unknown_model_returns_404_envelope(gateway: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == 404
    assert raised.value.body["type"] == "invalid_request_error"
    assert raised.value.body["code"] == "model_not_found"
    assert raised.value.body["param"] == "model"


def test_malformed_json_returns_400_envelope(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["code"] == "invalid_json"
    assert response.json()["error"]["param"] is None


def test_missing_messages_names_param(gateway: RunningGateway) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json={"model": TINY_MODEL_NAME})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_tools_rejected_with_param(gateway: RunningGateway) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(gateway).chat.completions.create(
            model=TINY_MODEL_NAME, messages=[{"role": "user", "content": "hi"}], tools=[tool]
        )

    assert raised.value.body["param"] == "tools"


def test_context_too_long_rejected(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(gateway).chat.completions.create(
            model=TINY_MODEL_NAME, messages=[{"role": "user", "content": "word " * 2000}], max_tokens=8
        )

    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "invalid_request_error"
    assert raised.value.body["code"] == "context_length_exceeded"
    assert raised.value.body["param"] == "messages"


def test_invalid_partner_header_rejected(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        chat(gateway, "bad partner/id", [{"role": "user", "content": "hi"}])

    assert raised.value.body["param"] == "X-Partner-ID"


def test_growing_conversation_stays_one_session(gateway: RunningGateway) -> None:
    first = chat(gateway, "carol", [{"role": "user", "content": "Tell me about the big blue sofa"}])
    reply = first.parse().choices[0].message.content
    second = chat(
        gateway,
        "carol",
        [
            {"role": "user", "content": "Tell me about the big blue sofa"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And the sofa again?"},
        ],
    )

    assert second.headers["x-session-id"] == first.headers["x-session-id"]


def test_new_conversation_gets_new_session(gateway: RunningGateway) -> None:
    first = chat(gateway, "carol", [{"role": "user", "content": "First conversation"}])
    second = chat(gateway, "carol", [{"role": "user", "content": "First conversation"}])

    assert second.headers["x-session-id"] != first.headers["x-session-id"]


def test_partners_histories_never_mix(gateway: RunningGateway) -> None:
    chat(gateway, "dave", [{"role": "user", "content": "dave's question"}])
    chat(gateway, "erin", [{"role": "user", "content": "erin's question"}])
    dave = httpx.get(f"{gateway.base_url}/v1/partners/dave/sessions").json()["data"]
    erin = httpx.get(f"{gateway.base_url}/v1/partners/erin/sessions").json()["data"]

    assert [turn["messages"][0]["content"] for session in dave for turn in session["turns"]] == ["dave's question"]
    assert [turn["messages"][0]["content"] for session in erin for turn in session["turns"]] == ["erin's question"]


def test_turn_record_has_fields(gateway: RunningGateway) -> None:
    chat(gateway, "frank", [{"role": "user", "content": "Record me"}], extra_body={"user": "ignored-user"})
    turn = httpx.get(f"{gateway.base_url}/v1/partners/frank/sessions").json()["data"][0]["turns"][0]

    assert turn["model"] == TINY_MODEL_NAME
    assert turn["adapter"] is None
    assert turn["usage"]["total_tokens"] == turn["usage"]["prompt_tokens"] + turn["usage"]["completion_tokens"]
    assert turn["completed_at"] >= turn["created_at"]
    assert turn["trainable"] is True


def test_user_field_names_partner(gateway: RunningGateway) -> None:
    client_for(gateway).chat.completions.create(
        model=TINY_MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, user="grace"
    )
    sessions = httpx.get(f"{gateway.base_url}/v1/partners/grace/sessions").json()["data"]

    assert len(sessions) == 1


def test_anonymous_turns_not_trainable(gateway: RunningGateway) -> None:
    chat(gateway, None, [{"role": "user", "content": "who am I"}])
    sessions = httpx.get(f"{gateway.base_url}/v1/partners/anonymous/sessions").json()["data"]
    response = httpx.post(f"{gateway.base_url}/v1/partners/anonymous/adapters")

    assert sessions[0]["turns"][0]["trainable"] is False
    assert response.status_code == 400


def test_history_survives_gateway_restart(tiny_settings: Settings) -> None:
    first = RunningGateway(tiny_settings).start()
    try:
        chat(first, "heidi", [{"role": "user", "content": "remember this"}])
    finally:
        first.stop()

    second = RunningGateway(tiny_settings).start()
    try:
        sessions = httpx.get(f"{second.base_url}/v1/partners/heidi/sessions").json()["data"]
    finally:
        second.stop()

    assert sessions[0]["turns"][0]["messages"][0]["content"] == "remember this"


def test_training_without_sessions_rejected(gateway: RunningGateway) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/partners/nobody/adapters")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_sessions"


def test_unknown_job_returns_404(gateway: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError):
        client_for(gateway).fine_tuning.jobs.retrieve("ftjob-missing")


def test_health_and_readiness(gateway: RunningGateway) -> None:
    health = httpx.get(f"{gateway.base_url}/healthz")
    ready = httpx.get(f"{gateway.base_url}/readyz")

    assert health.json() == {"status": "ok"}
    assert ready.json()["checks"] == {"model_loaded": True, "redis": True}


def test_redis_down_returns_503(tiny_settings: Settings) -> None:
    from tests.conftest import free_port

    unreachable = tiny_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    gateway = RunningGateway(unreachable)
    gateway.thread.start()
    try:
        body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = _post_when_model_loaded(f"{gateway.base_url}/v1/chat/completions", body)
        ready = httpx.get(f"{gateway.base_url}/readyz")
    finally:
        gateway.stop()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert ready.status_code == 503


def _post_when_model_loaded(url: str, body: dict, timeout_s: float = 60.0) -> httpx.Response:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.post(url, json=body, timeout=30)
            if response.json()["error"]["code"] != "model_loading" or time.monotonic() > deadline:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_malformed_job_id_returns_404(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.base_url}/v1/fine_tuning/jobs/ftjob-abc:events")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_openai_client_cancels_job(gateway: RunningGateway) -> None:
    chat(gateway, "rita", [{"role": "user", "content": "something to train on"}])
    job = httpx.post(f"{gateway.base_url}/v1/partners/rita/adapters").json()
    cancelled = client_for(gateway).fine_tuning.jobs.cancel(job["id"])
    again = httpx.post(f"{gateway.base_url}/v1/fine_tuning/jobs/{job['id']}/cancel")

    assert cancelled.status == "cancelled"
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "job_not_cancellable"


def test_oversize_body_rejected_413(gateway: RunningGateway, tiny_settings: Settings) -> None:
    text = "word " * (tiny_settings.max_request_body_bytes // 5 + 1)
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_chunked_oversize_body_rejected(gateway: RunningGateway, tiny_settings: Settings) -> None:
    chunk = b"x" * 65536

    def chunks() -> Iterator[bytes]:
        for _ in range(tiny_settings.max_request_body_bytes // len(chunk) + 2):
            yield chunk

    response = httpx.post(f"{gateway.base_url}/tokenize", content=chunks(), timeout=60)

    assert response.status_code == 413


def test_extra_choices_not_empty(gateway: RunningGateway) -> None:
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 5,
        "n": 3,
        "temperature": 1.0,
        "seed": 1,
    }
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60).json()
    generated = sum(len(choice["message"]["content"]) > 0 for choice in response["choices"])

    assert generated == 3
    assert response["usage"]["completion_tokens"] > 5
