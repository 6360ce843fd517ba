"""vLLM's ``continue_final_message`` and ``add_generation_prompt`` chat extensions, local and upstream."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from adapters.settings import BackendParams, ModelEntry
from tests.conftest import TINY_MODEL_NAME, RunningGateway, free_port, make_settings
from tests.fake_upstream import FakeUpstream
from trainer.mining import session_transcript

# Without this, importing litellm downloads the model cost map from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

HOSTED = "hosted-model"
VIA_LITELLM = "hosted-via-litellm"
KEY_VARIABLE = "CFM_UPSTREAM_KEY"
PARTIAL = [
    {"role": "user", "content": "Which mug should I use for the tea?"},
    {"role": "assistant", "content": "Use the small red ceramic mug"},
]


def post(gateway: RunningGateway, body: dict[str, Any], partner: str = "cfm-partner") -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers={"X-Partner-ID": partner}, timeout=60
    )


def continue_body(messages: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    return {
        "model": TINY_MODEL_NAME,
        "messages": messages,
        "continue_final_message": True,
        "add_generation_prompt": False,
        "temperature": 0,
        "max_tokens": 8,
        **fields,
    }


def legacy_completion(gateway: RunningGateway, prompt: str) -> str:
    body = {"model": TINY_MODEL_NAME, "prompt": prompt, "temperature": 0, "max_tokens": 8}
    response = httpx.post(f"{gateway.base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def rendered(tiny_model_path: str, messages: list[dict[str, str]], **flags: bool) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    return str(tokenizer.apply_chat_template(messages, tokenize=False, **flags))


def streamed_text(gateway: RunningGateway, body: dict[str, Any]) -> str:
    url = f"{gateway.base_url}/v1/chat/completions"
    parts = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line.removeprefix("data: "))["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def test_continuation_matches_rendered_prefix(gateway: RunningGateway, tiny_model_path: str) -> None:
    response = post(gateway, continue_body(PARTIAL))
    assert response.status_code == 200, response.text

    prompt = rendered(tiny_model_path, PARTIAL, continue_final_message=True)
    assert prompt.endswith("Use the small red ceramic mug")
    assert response.json()["choices"][0]["message"]["content"] == legacy_completion(gateway, prompt)


def test_continuation_streams_same_text(gateway: RunningGateway) -> None:
    body = continue_body(PARTIAL)
    complete = post(gateway, body).json()["choices"][0]["message"]["content"]

    assert streamed_text(gateway, body) == complete


def test_no_generation_prompt_rendering(gateway: RunningGateway, tiny_model_path: str) -> None:
    messages = PARTIAL[:1]
    body = {"model": TINY_MODEL_NAME, "messages": messages, "add_generation_prompt": False, "temperature": 0}
    response = post(gateway, {**body, "max_tokens": 8})
    assert response.status_code == 200, response.text

    prompt = rendered(tiny_model_path, messages, add_generation_prompt=False)
    assert response.json()["choices"][0]["message"]["content"] == legacy_completion(gateway, prompt)


def test_continuation_requires_assistant_last(gateway: RunningGateway) -> None:
    response = post(gateway, continue_body(PARTIAL[:1]))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "continue_final_message"
    assert "'user'" in error["message"]


def test_both_template_flags_rejected(gateway: RunningGateway) -> None:
    response = post(gateway, continue_body(PARTIAL, add_generation_prompt=True))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "continue_final_message"


def test_default_generation_prompt_allowed(gateway: RunningGateway) -> None:
    body = continue_body(PARTIAL)
    del body["add_generation_prompt"]

    assert post(gateway, body).status_code == 200


def test_continued_turn_storage(gateway: RunningGateway) -> None:
    partner = f"cfm-{secrets.token_hex(4)}"
    first = post(gateway, continue_body(PARTIAL), partner=partner)
    continuation = first.json()["choices"][0]["message"]["content"]
    joined = {"role": "assistant", "content": PARTIAL[1]["content"] + continuation}
    follow_up = [PARTIAL[0], joined, {"role": "user", "content": "Thanks."}]
    second = post(gateway, {"model": TINY_MODEL_NAME, "messages": follow_up, "max_tokens": 4}, partner=partner)

    sessions = httpx.get(f"{gateway.base_url}/v1/partners/{partner}/sessions", timeout=30).json()["data"]
    turn = sessions[0]["turns"][0]
    assert turn["messages"] == PARTIAL
    assert turn["response"]["content"] == continuation
    assert turn["continue_final_message"] is True
    assert turn["trainable"] is False
    assert second.headers["X-Session-ID"] == first.headers["X-Session-ID"]


# --- Upstreams ---


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(free_port()).start()
    yield fake
    fake.stop()


@pytest.fixture()
def upstream_gateway(
    fake_upstream: FakeUpstream,
    key_prefix: str,
    tmp_path: Path,
    tiny_model_path: str,
    model_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RunningGateway]:
    monkeypatch.setenv(KEY_VARIABLE, f"sk-fake-{secrets.token_hex(8)}")
    local = ModelEntry(model_name=TINY_MODEL_NAME, litellm_params=BackendParams(model=f"local/{tiny_model_path}"))
    base = fake_upstream.base_url
    hosted = BackendParams(
        model="openai/upstream-model", api_base=base, api_key=f"os.environ/{KEY_VARIABLE}", max_retries=0
    )
    litellm = BackendParams(
        model="custom_openai/upstream-model", api_base=base, api_key=f"os.environ/{KEY_VARIABLE}", max_retries=0
    )
    settings = make_settings(
        key_prefix=key_prefix,
        tmp_path=tmp_path,
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
        model_list=[
            local,
            ModelEntry(model_name=HOSTED, litellm_params=hosted),
            ModelEntry(model_name=VIA_LITELLM, litellm_params=litellm),
        ],
    )
    fake_upstream.reset()
    running = RunningGateway(settings).start()
    yield running
    running.stop()


def test_upstream_receives_template_flags(upstream_gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    response = post(upstream_gateway, continue_body(PARTIAL, model=HOSTED))
    assert response.status_code == 200, response.text

    received = fake_upstream.requests[-1].body
    assert received["continue_final_message"] is True
    assert received["add_generation_prompt"] is False


def test_upstream_checks_last_role(upstream_gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    response = post(upstream_gateway, continue_body(PARTIAL[:1], model=HOSTED))

    assert response.status_code == 400
    assert fake_upstream.requests == []


def test_litellm_rejects_continuation(upstream_gateway: RunningGateway) -> None:
    response = post(upstream_gateway, continue_body(PARTIAL, model=VIA_LITELLM))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "continue_final_message"
    assert error["code"] == "unsupported_parameter"


def test_litellm_accepts_default_flags(upstream_gateway: RunningGateway) -> None:
    body = {"model": VIA_LITELLM, "messages": PARTIAL[:1], "add_generation_prompt": True, "max_tokens": 4}
    body["continue_final_message"] = False

    assert post(upstream_gateway, body).status_code == 200


def test_transcript_joins_continued_message() -> None:
    turn = {
        "messages": PARTIAL,
        "response": {"role": "assistant", "content": " with the chipped handle."},
        "continue_final_message": True,
    }

    transcript = session_transcript([turn])
    assert transcript[-1]["content"] == "Use the small red ceramic mug with the chipped handle."
    assert len(transcript) == len(PARTIAL)
