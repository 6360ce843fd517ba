"""The training policy: automatic jobs after enough new turns, with cooldown, opt-out and one job at a time."""

from __future__ import annotations

import httpx
import pytest

from adapters.settings import Settings, TrainingPolicy
from tests.conftest import TINY_MODEL_NAME, RunningGateway


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
