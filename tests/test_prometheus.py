"""The Prometheus ``/metrics`` page: request accounting, token counters and gauges read from Redis at scrape time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER, AdapterRegistry, AdapterVersion
from adapters.settings import BackendParams, ModelEntry, Settings
from gateway.prometheus import GatewayMetrics
from tests.conftest import TINY_MODEL_NAME, RunningGateway, free_port
from tests.fake_upstream import FakeUpstream
from trainer.jobs import JobStore, new_job, new_job_id

PARTNER = "partner-zq81x"
REQUIRED_SERIES = (
    "convention_gateway_requests_total",
    "convention_gateway_request_duration_seconds",
    "convention_gateway_time_to_first_token_seconds",
    "convention_gateway_tokens_total",
    "convention_gateway_requests_by_adapter_kind_total",
    "convention_gateway_loaded_adapters",
    "convention_gateway_active_adapters",
    "convention_gateway_training_jobs",
)
UPSTREAM_MODEL = "hosted-model"


def scrape(gateway: RunningGateway) -> str:
    response = httpx.get(f"{gateway.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """Returns the value of the sample ``name`` with exactly ``labels``, or 0 when the series does not exist yet."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and item.labels == labels:
                return float(item.value)
    return 0.0


def chat(gateway: RunningGateway, model: str = TINY_MODEL_NAME, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me about the old oak desk."}], **fields}
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"max_tokens": 6, "temperature": 0, **body},
        headers={"X-Partner-ID": PARTNER},
        timeout=60,
    )


def stored_turns(gateway: RunningGateway, partner: str = PARTNER) -> list[dict[str, Any]]:
    sessions = httpx.get(f"{gateway.base_url}/v1/partners/{partner}/sessions", timeout=10).json()["data"]
    return [turn for session in sessions for turn in session["turns"]]


def test_metrics_page_lists_series(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.base_url}/metrics", timeout=10)
    names = {family.name for family in text_string_to_metric_families(response.text)}
    names |= {f"{name}_total" for name in names}

    assert response.headers["content-type"].startswith("text/plain")
    for series in REQUIRED_SERIES:
        assert series in names, series


def test_requests_counted_by_status(gateway: RunningGateway) -> None:
    ok = {"endpoint": "/v1/chat/completions", "model": TINY_MODEL_NAME, "status": "200"}
    rejected = {"endpoint": "/v1/chat/completions", "model": TINY_MODEL_NAME, "status": "400"}
    # A body that fails validation never reaches the route, so its model is unknown.
    malformed = {"endpoint": "/v1/chat/completions", "model": "none", "status": "400"}
    unknown = {"endpoint": "/v1/chat/completions", "model": "other", "status": "404"}
    before = scrape(gateway)

    for _ in range(2):
        assert chat(gateway).status_code == 200
    assert chat(gateway, top_logprobs=2).status_code == 400
    assert chat(gateway, temperature=-1).status_code == 400
    assert chat(gateway, model="no-such-model").status_code == 404
    after = scrape(gateway)

    for labels, expected in ((ok, 2), (rejected, 1), (malformed, 1), (unknown, 1)):
        moved = sample(after, "convention_gateway_requests_total", **labels)
        assert moved - sample(before, "convention_gateway_requests_total", **labels) == expected, labels


def test_adapter_model_ids_map_to_base(gateway: RunningGateway) -> None:
    model = f"ft:{TINY_MODEL_NAME}:{PARTNER}:7"
    labels = {"endpoint": "/v1/chat/completions", "model": TINY_MODEL_NAME, "status": "404"}
    before = scrape(gateway)

    assert chat(gateway, model=model).status_code == 404
    after = scrape(gateway)

    assert (
        sample(after, "convention_gateway_requests_total", **labels)
        - sample(before, "convention_gateway_requests_total", **labels)
        == 1
    )
    assert "ft:" not in after


def test_duration_and_first_token(gateway: RunningGateway) -> None:
    duration = "convention_gateway_request_duration_seconds_count"
    first_token = "convention_gateway_time_to_first_token_seconds_count"
    endpoint = {"endpoint": "/v1/chat/completions", "model": TINY_MODEL_NAME}
    before = scrape(gateway)

    assert chat(gateway, stream=True, max_tokens=8).status_code == 200
    assert chat(gateway).status_code == 200
    after = scrape(gateway)

    assert sample(after, duration, **endpoint) - sample(before, duration, **endpoint) == 2
    # Random weights can end a stream without any text, so the first-token count moves by at most one.
    assert sample(after, first_token, model=TINY_MODEL_NAME) - sample(before, first_token, model=TINY_MODEL_NAME) in (
        0,
        1,
    )


def test_streamed_text_times_first_token(gateway: RunningGateway) -> None:
    first_token = "convention_gateway_time_to_first_token_seconds_count"
    before = sample(scrape(gateway), first_token, model=TINY_MODEL_NAME)
    sent_text = 0
    for _ in range(3):
        with httpx.stream(
            "POST",
            f"{gateway.base_url}/v1/chat/completions",
            json={"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
            headers={"X-Partner-ID": PARTNER},
            timeout=60,
        ) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
        chunks = [json.loads(event) for event in events]
        sent_text += any(choice["delta"].get("content") for chunk in chunks for choice in chunk["choices"])

    assert sent_text > 0
    assert sample(scrape(gateway), first_token, model=TINY_MODEL_NAME) - before == sent_text


def test_tokens_follow_stored_turns(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    responses = [chat(gateway).json() for _ in range(2)]
    after = scrape(gateway)
    turns = stored_turns(gateway)

    def moved(kind: str) -> float:
        labels = {"model": TINY_MODEL_NAME, "kind": kind}
        return sample(after, "convention_gateway_tokens_total", **labels) - sample(
            before, "convention_gateway_tokens_total", **labels
        )

    assert moved("completion") == sum(response["usage"]["completion_tokens"] for response in responses)
    assert moved("prompt") == sum(response["usage"]["prompt_tokens"] for response in responses)
    assert moved("partner") == sum(turn["partner_tokens"] for turn in turns)
    assert moved("planning") == sum(turn["planning_tokens"] for turn in turns)


def test_bare_model_counted_as_none(gateway: RunningGateway) -> None:
    name = "convention_gateway_requests_by_adapter_kind_total"
    before = scrape(gateway)

    assert chat(gateway).status_code == 200
    assert chat(gateway, model="no-such-model").status_code == 404
    after = scrape(gateway)

    assert sample(after, name, kind="none") - sample(before, name, kind="none") == 1
    assert sample(after, name, kind="partner") == sample(before, name, kind="partner")


def test_no_ids_in_metrics_text(gateway: RunningGateway) -> None:
    response = chat(gateway)
    session_id = response.headers["x-session-id"]
    # Paths that contain the partner id must show up by their route template only.
    for path in (f"/v1/partners/{PARTNER}/metrics", f"/v1/partners/{PARTNER}/sessions", f"/v1/partners/{PARTNER}"):
        assert httpx.get(f"{gateway.base_url}{path}", timeout=10).status_code == 200
    text = scrape(gateway)

    assert PARTNER not in text
    assert session_id not in text
    assert 'endpoint="/v1/partners/{partner_id}/metrics"' in text


def register_active(registry: AdapterRegistry, owner: str, artifact_dir: Path) -> None:
    folder = artifact_dir / owner / "1"
    adapter = AdapterVersion(
        partner_id=owner, version=1, base_model=TINY_MODEL_NAME, path=str(folder), created_at=int(time.time())
    )
    registry.register(adapter, activate=True)


def test_active_adapters_gauge(gateway: RunningGateway, tiny_settings: Settings, redis_client: redis.Redis) -> None:
    registry = AdapterRegistry(redis_client, Keys(tiny_settings.key_prefix))
    for owner in ("p-one", "p-two", CONVENTION_OWNER):
        register_active(registry, owner, Path(tiny_settings.artifact_dir))
    text = scrape(gateway)

    assert sample(text, "convention_gateway_active_adapters", owner_kind="partner") == 2
    assert sample(text, "convention_gateway_active_adapters", owner_kind="convention") == 1
    assert sample(text, "convention_gateway_loaded_adapters") == 0


def create_job(jobs: JobStore, partner_id: str) -> str:
    job = new_job(job_id=new_job_id(), partner_id=partner_id, model=TINY_MODEL_NAME, hyperparameters={})
    return str(jobs.create(job)["id"])


def test_training_jobs_by_status(gateway: RunningGateway, tiny_settings: Settings, redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client, Keys(tiny_settings.key_prefix))
    finished = create_job(jobs, "p-one")
    jobs.set_status(finished, "succeeded")
    waiting = create_job(jobs, "p-two")
    jobs.set_status(waiting, "queued")
    create_job(jobs, "p-three")
    first = scrape(gateway)
    jobs.set_status(waiting, "cancelled")
    second = scrape(gateway)

    expected_first = {"succeeded": 1, "queued": 1, "validating_files": 1, "running": 0, "failed": 0, "cancelled": 0}
    for status, count in expected_first.items():
        assert sample(first, "convention_gateway_training_jobs", status=status) == count, status
    assert sample(second, "convention_gateway_training_jobs", status="queued") == 0
    assert sample(second, "convention_gateway_training_jobs", status="cancelled") == 1
    assert sample(second, "convention_gateway_training_jobs", status="succeeded") == 1


@pytest.mark.parametrize(
    ("model", "label"),
    [
        (TINY_MODEL_NAME, TINY_MODEL_NAME),
        (f"ft:{TINY_MODEL_NAME}:alice:3", TINY_MODEL_NAME),
        (f"ft:{TINY_MODEL_NAME}:_convention:1", TINY_MODEL_NAME),
        ("ft:unknown-base:alice:3", "other"),
        ("gpt-unknown", "other"),
        (None, "none"),
    ],
)
def test_model_label_stays_bounded(tiny_settings: Settings, model: str | None, label: str) -> None:
    assert GatewayMetrics(tiny_settings).model_label(model) == label


def test_registries_are_per_app(tiny_settings: Settings) -> None:
    first, second = GatewayMetrics(tiny_settings), GatewayMetrics(tiny_settings)
    first.requests_by_adapter_kind.labels(kind="none").inc()

    assert second.registry.get_sample_value("convention_gateway_requests_by_adapter_kind_total", {"kind": "none"}) == 0


@pytest.fixture()
def upstream_gateway(tiny_settings: Settings) -> Iterator[RunningGateway]:
    fake = FakeUpstream(free_port()).start()
    hosted = ModelEntry(
        model_name=UPSTREAM_MODEL,
        litellm_params=BackendParams(model="openai/upstream-model-v1", api_base=fake.base_url),
    )
    settings = tiny_settings.model_copy(update={"model_list": [*tiny_settings.model_list, hosted]})
    running = RunningGateway(settings).start()
    yield running
    running.stop()
    fake.stop()


def test_upstream_turns_counted(upstream_gateway: RunningGateway) -> None:
    name = "convention_gateway_requests_by_adapter_kind_total"
    before = scrape(upstream_gateway)

    assert chat(upstream_gateway, model=UPSTREAM_MODEL).status_code == 200
    deadline = time.monotonic() + 10
    while not stored_turns(upstream_gateway) and time.monotonic() < deadline:
        time.sleep(0.05)
    turn = stored_turns(upstream_gateway)[0]
    after = scrape(upstream_gateway)
    partner = {"model": UPSTREAM_MODEL, "kind": "partner"}

    assert sample(after, name, kind="upstream") - sample(before, name, kind="upstream") == 1
    assert turn["served_model"] == UPSTREAM_MODEL
    assert turn["partner_tokens_unit"] == "tokens"
    assert sample(after, "convention_gateway_tokens_total", **partner) == turn["partner_tokens"]
