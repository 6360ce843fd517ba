"""The cheap data check a training job passes before it is queued."""

from __future__ import annotations

import json

import pytest
import redis

from adapters.keys import Keys
from adapters.settings import BackendParams, ModelEntry, Settings
from trainer.validation import InvalidTrainingDataError, validate_training_data


def store_turns(client: redis.Redis, keys: Keys, partner_id: str, session_id: str, count: int) -> None:
    client.zadd(keys.sessions(partner_id), {session_id: 1})
    turn = {"messages": [{"role": "user", "content": "hi"}], "response": {"role": "assistant", "content": "OK."}}
    for _ in range(count):
        client.rpush(keys.session_turns(partner_id, session_id), json.dumps(turn))


def test_counts_sessions_and_turns(tiny_settings: Settings, redis_client: redis.Redis) -> None:
    keys = Keys(tiny_settings.key_prefix)
    store_turns(redis_client, keys, "alice", "sess-1", 2)
    store_turns(redis_client, keys, "alice", "sess-2", 3)
    store_turns(redis_client, keys, "alice", "sess-empty", 0)
    summary = validate_training_data(redis_client, keys, settings=tiny_settings, partner_id="alice")

    assert summary.sessions == 2
    assert summary.turns == 5
    assert summary.describe() == "2 sessions with 5 turns"


def test_sessions_without_turns_rejected(tiny_settings: Settings, redis_client: redis.Redis) -> None:
    keys = Keys(tiny_settings.key_prefix)
    store_turns(redis_client, keys, "alice", "sess-empty", 0)

    with pytest.raises(InvalidTrainingDataError) as raised:
        validate_training_data(redis_client, keys, settings=tiny_settings, partner_id="alice")
    assert "partner 'alice' has no stored session with turns (1 session without turns)" in str(raised.value)
    assert raised.value.error_object()["code"] == "invalid_training_data"
    assert raised.value.error_object()["param"] is None


def test_missing_local_model_rejected(tiny_settings: Settings, redis_client: redis.Redis) -> None:
    keys = Keys(tiny_settings.key_prefix)
    store_turns(redis_client, keys, "alice", "sess-1", 1)
    upstream = ModelEntry(model_name="gpt", litellm_params=BackendParams(model="openai/gpt-4o-mini"))
    settings = tiny_settings.model_copy(update={"model_list": [upstream]})

    with pytest.raises(InvalidTrainingDataError) as raised:
        validate_training_data(redis_client, keys, settings=settings, partner_id="alice")
    assert "model_list has no local/ entry" in str(raised.value)
