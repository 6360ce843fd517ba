"""The training policy: automatic jobs after enough new turns, with cooldown, opt-out and one job at a time."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job

from adapters.keys import Keys
from adapters.settings import Settings, TrainingPolicy
from tests.conftest import TINY_MODEL_NAME, RunningGateway
from trainer.jobs import JobStore
from trainer.scheduling import start_training_job


@pytest.fixture()
def policy_gateway(tiny_settings: Settings) -> RunningGateway:
    policy = TrainingPolicy(auto_training=True, min_new_turns=3, cooldown_s=0)
    running = RunningGateway(tiny_settings.model_copy(update={"training_policy": policy})).start()
    yield running
    running.stop()


def say(gateway: RunningGateway, partner: str | None, text: str) -> None:
    headers = {"X-Partner-ID": partner} if partner else {}
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    assert (
        httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code == 200
    )


def partner(gateway: RunningGateway, partner_id: str) -> dict:
    return httpx.get(f"{gateway.base_url}/v1/partners/{partner_id}").json()


def jobs_of(gateway: RunningGateway, partner_id: str) -> list[dict]:
    jobs = httpx.get(f"{gateway.base_url}/v1/fine_tuning/jobs?limit=100").json()["data"]
    return [job for job in jobs if job["partner_id"] == partner_id]


def test_job_starts_after_enough_turns(policy_gateway: RunningGateway) -> None:
    for text in ("one", "two"):
        say(policy_gateway, "sam", text)
    before = jobs_of(policy_gateway, "sam")
    say(policy_gateway, "sam", "three")
    after = jobs_of(policy_gateway, "sam")

    assert before == []
    assert [job["metadata"]["reason"] for job in after] == ["automatic: 3 new turns"]
    assert [job["status"] for job in after] == ["queued"]
    assert partner(policy_gateway, "sam")["new_turns"] == 0


def test_open_job_blocks_second_job(policy_gateway: RunningGateway) -> None:
    for index in range(6):
        say(policy_gateway, "tia", f"message {index}")

    assert len(jobs_of(policy_gateway, "tia")) == 1
    assert partner(policy_gateway, "tia")["new_turns"] == 3


def test_opted_out_partner_never_trained(policy_gateway: RunningGateway) -> None:
    update = httpx.patch(f"{policy_gateway.base_url}/v1/partners/uma", json={"auto_training": False})
    for index in range(4):
        say(policy_gateway, "uma", f"message {index}")

    assert update.json()["auto_training"] is False
    assert jobs_of(policy_gateway, "uma") == []


def test_anonymous_turns_never_counted(policy_gateway: RunningGateway) -> None:
    for index in range(4):
        say(policy_gateway, None, f"message {index}")

    assert jobs_of(policy_gateway, "anonymous") == []
    assert partner(policy_gateway, "anonymous")["new_turns"] == 0


def test_cooldown_delays_next_job(tiny_settings: Settings) -> None:
    policy = TrainingPolicy(auto_training=True, min_new_turns=1, cooldown_s=3600)
    gateway = RunningGateway(tiny_settings.model_copy(update={"training_policy": policy})).start()
    try:
        say(gateway, "vic", "first")
        first = jobs_of(gateway, "vic")[0]
        httpx.post(f"{gateway.base_url}/v1/fine_tuning/jobs/{first['id']}/cancel")
        say(gateway, "vic", "second")
        jobs = jobs_of(gateway, "vic")
    finally:
        gateway.stop()

    assert len(jobs) == 1


def test_unknown_partner_field_rejected(policy_gateway: RunningGateway) -> None:
    response = httpx.patch(f"{policy_gateway.base_url}/v1/partners/wes", json={"colour": "blue"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "colour"


def start_job(settings: Settings, client: redis.Redis, queue_client: redis.Redis) -> dict:
    jobs = JobStore(client, Keys(settings.key_prefix))
    return start_training_job(
        settings=settings, jobs=jobs, queue_client=queue_client, partner_id="alice", reason="requested"
    )


def test_valid_data_moves_job_to_queued(
    tiny_settings: Settings, redis_client: redis.Redis, queue_client: redis.Redis
) -> None:
    keys = Keys(tiny_settings.key_prefix)
    turn = {"messages": [{"role": "user", "content": "hi"}], "response": {"role": "assistant", "content": "OK."}}
    redis_client.zadd(keys.sessions("alice"), {"sess-1": 1})
    redis_client.rpush(keys.session_turns("alice", "sess-1"), json.dumps(turn), json.dumps(turn))
    job = start_job(tiny_settings, redis_client, queue_client)
    events = list(reversed(JobStore(redis_client, keys).events(job["id"])))

    assert job["status"] == "queued"
    assert [event["message"] for event in events] == [
        "Training job created for partner alice",
        "Validated training data: 1 session with 2 turns",
        "Job status: queued",
    ]
    assert events[1]["data"] == {"sessions": 1, "turns": 2}
    assert Queue(tiny_settings.queue_name, connection=queue_client).job_ids == [job["id"]]
    assert redis_client.hget(keys.partner_stats("alice"), "new_turns") == "0"


def test_invalid_data_fails_without_enqueue(
    tiny_settings: Settings, redis_client: redis.Redis, queue_client: redis.Redis
) -> None:
    keys = Keys(tiny_settings.key_prefix)
    redis_client.zadd(keys.sessions("alice"), {"sess-1": 1})
    redis_client.hset(keys.session("alice", "sess-1"), mapping={"created_at": 1, "turn_count": 0})
    sessions_before = redis_client.zrange(keys.sessions("alice"), 0, -1, withscores=True)
    job = start_job(tiny_settings, redis_client, queue_client)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_data"
    assert job["error"]["param"] is None
    assert "send chat completions with X-Partner-ID: alice" in job["error"]["message"]
    assert Job.exists(job["id"], connection=queue_client) is False
    assert Queue(tiny_settings.queue_name, connection=queue_client).job_ids == []
    assert redis_client.zrange(keys.sessions("alice"), 0, -1, withscores=True) == sessions_before
    assert redis_client.hgetall(keys.session("alice", "sess-1")) == {"created_at": "1", "turn_count": "0"}
    assert redis_client.get(keys.partner_open_job("alice")) is None
