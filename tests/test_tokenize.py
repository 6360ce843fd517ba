"""POST /tokenize and /detokenize on a gateway that serves the tiny local model and one upstream entry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from transformers import AutoTokenizer

from adapters.settings import BackendParams, ModelEntry
from tests.conftest import REDIS_URL, TINY_MODEL_NAME, RunningGateway, free_port, make_settings

UPSTREAM_MODEL = "hosted-model"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name the red mug."}]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: str, model_cache_dir: Path
) -> Iterator[RunningGateway]:
    """One gateway for the module; the upstream entry points at a closed local port and is never contacted."""
    prefix = f"cgtest-{secrets.token_hex(6)}"
    upstream = ModelEntry(
        model_name=UPSTREAM_MODEL,
        litellm_params=BackendParams(model="openai/upstream-v1", api_base=f"http://127.0.0.1:{free_port()}/v1"),
    )
    settings = make_settings(
        key_prefix=prefix,
        tmp_path=tmp_path_factory.mktemp("tokenize"),
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
    )
    settings = settings.model_copy(update={"model_list": [*settings.model_list, upstream]})
    running = RunningGateway(settings).start()
    yield running
    running.stop()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


def post(gateway: RunningGateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", json=body, timeout=30)


def test_prompt_tokens_match_tokenizer(served: RunningGateway, tokenizer: Any) -> None:
    response = post(served, "/tokenize", {"model": TINY_MODEL_NAME, "prompt": "the chipped teapot"})

    assert response.status_code == 200
    body = response.json()
    assert body["tokens"] == tokenizer("the chipped teapot")["input_ids"]
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 1024
    assert "token_strs" not in body


def test_token_strs_returned_when_requested(served: RunningGateway, tokenizer: Any) -> None:
    body = {"model": TINY_MODEL_NAME, "prompt": "teapot", "return_token_strs": True}
    result = post(served, "/tokenize", body).json()

    assert result["token_strs"] == tokenizer.convert_ids_to_tokens(result["tokens"])


def test_messages_use_chat_template(served: RunningGateway, tokenizer: Any) -> None:
    response = post(served, "/tokenize", {"model": TINY_MODEL_NAME, "messages": MESSAGES})

    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    expected_ids = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert response.status_code == 200
    assert response.json()["tokens"] == list(expected_ids)


def test_generation_prompt_can_be_left_out(served: RunningGateway) -> None:
    with_prompt = post(served, "/tokenize", {"model": TINY_MODEL_NAME, "messages": MESSAGES}).json()
    body = {"model": TINY_MODEL_NAME, "messages": MESSAGES, "add_generation_prompt": False}
    without_prompt = post(served, "/tokenize", body).json()

    assert without_prompt["count"] < with_prompt["count"]
    assert with_prompt["tokens"][: without_prompt["count"]] == without_prompt["tokens"]


def test_detokenize_round_trips_text(served: RunningGateway) -> None:
    tokens = post(served, "/tokenize", {"model": TINY_MODEL_NAME, "prompt": "a small red mug"}).json()["tokens"]
    response = post(served, "/detokenize", {"model": TINY_MODEL_NAME, "tokens": tokens})

    assert response.status_code == 200
    assert response.json() == {"prompt": "a small red mug"}


def test_detokenize_rejects_invalid_id(served: RunningGateway, tokenizer: Any) -> None:
    response = post(served, "/detokenize", {"model": TINY_MODEL_NAME, "tokens": [1, len(tokenizer) + 5]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tokens"
    assert str(len(tokenizer) + 5) in error["message"]


def test_unknown_model_returns_404(served: RunningGateway) -> None:
    response = post(served, "/tokenize", {"model": "no-such-model", "prompt": "hi"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_upstream_model_rejected_with_400(served: RunningGateway) -> None:
    response = post(served, "/detokenize", {"model": UPSTREAM_MODEL, "tokens": [1, 2]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_model"
    assert "only available for the local model" in error["message"]
    assert TINY_MODEL_NAME in error["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"prompt": "hi", "messages": MESSAGES},
        {"messages": MESSAGES, "continue_final_message": True},
        {"prompt": "hi", "unknown_field": 1},
    ],
    ids=["neither", "both", "continue-with-generation-prompt", "unknown-field"],
)
def test_invalid_tokenize_bodies_rejected(served: RunningGateway, extra: dict[str, Any]) -> None:
    response = post(served, "/tokenize", {"model": TINY_MODEL_NAME, **extra})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_adapter_id_returns_404(served: RunningGateway) -> None:
    model = f"ft:{TINY_MODEL_NAME}:someone:v1"
    response = httpx.post(
        f"{served.base_url}/tokenize", json={"model": model, "prompt": "hi"}, headers={"X-Partner-ID": "someone"}
    )

    assert response.status_code == 404
