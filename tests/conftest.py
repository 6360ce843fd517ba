"""Shared fixtures: a real Redis under a per-test key prefix, the converted default model, a tiny model."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from adapters.settings import BackendParams, ModelEntry, Settings

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
TINY_MODEL_NAME = "tiny-test-model"


@pytest.fixture()
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(f"tests need a real Redis at REDIS_URL={REDIS_URL}: {error}")
    yield client
    client.close()


@pytest.fixture()
def queue_client() -> Iterator[redis.Redis]:
    """A Redis client that returns bytes, as RQ needs for its pickled job data."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture()
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh key prefix per test; every key under it (and the test's RQ queue) is deleted afterwards."""
    prefix = f"cgtest-{secrets.token_hex(6)}"
    yield prefix
    delete_test_keys(redis_client, prefix)


def delete_test_keys(client: redis.Redis, prefix: str) -> None:
    """Deletes the product's keys under ``prefix`` and RQ's keys of the test's queue and jobs."""
    job_ids = [raw if isinstance(raw, str) else raw.decode() for raw in client.zrange(f"{prefix}:jobs", 0, -1)]
    patterns = [f"{prefix}:*", f"rq:*{prefix}*", *(f"rq:*{job_id}*" for job_id in job_ids)]
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def default_model_path(model_cache_dir: Path) -> str:
    """The real default model, converted from the embedded GGUF once per test run."""
    from adapters.base_model import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct", model_cache_dir)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, default_model_path: str) -> str:
    """A two-layer random-weight Llama with the default model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_settings(
    *,
    key_prefix: str,
    tmp_path: Path,
    model_name: str,
    model_path: str,
    model_cache_dir: Path,
    **overrides: Any,
) -> Settings:
    entry = ModelEntry(model_name=model_name, litellm_params=BackendParams(model=f"local/{model_path}"))
    values: dict[str, Any] = {
        "key_prefix": key_prefix,
        "queue_name": f"training-{key_prefix}",
        "model_list": [entry],
        "model_cache_dir": model_cache_dir,
        "artifact_dir": tmp_path / "adapters",
        "default_max_tokens": 16,
    }
    # Environment variables (REDIS_URL in CI) win over constructor values, so the test's own values are applied
    # after construction.
    return Settings(**values).model_copy(update={"redis_url": REDIS_URL, **values, **overrides})


@pytest.fixture()
def tiny_settings(key_prefix: str, tmp_path: Path, tiny_model_path: str, model_cache_dir: Path) -> Settings:
    return make_settings(
        key_prefix=key_prefix,
        tmp_path=tmp_path,
        model_name=TINY_MODEL_NAME,
        model_path=tiny_model_path,
        model_cache_dir=model_cache_dir,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningGateway:
    """A gateway served by uvicorn on a background thread, on a free local port."""

    def __init__(self, settings: Settings) -> None:
        from gateway.app import create_app

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 120.0) -> RunningGateway:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("the gateway did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture()
def gateway(tiny_settings: Settings) -> Iterator[RunningGateway]:
    running = RunningGateway(tiny_settings).start()
    yield running
    running.stop()
