"""OpenAI wire compatibility of the local engine, driven by the official openai client (sync and async)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import redis
from openai import AsyncOpenAI, OpenAI
from transformers import AutoTokenizer

from adapters.keys import Keys
from adapters.settings import Settings
from tests.conftest import TINY_MODEL_NAME, RunningGateway
from tests.test_routing import register_adapter
from trainer.jobs import JobStore, new_job, new_job_id

USER = [{"role": "user", "content": "Name three fruits"}]


def client_for(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


def create(gateway: RunningGateway, **fields: object) -> object:
    values: dict[str, object] = {"model": TINY_MODEL_NAME, "messages": USER, "max_tokens": 6, "temperature": 0}
    values.update(fields)
    return client_for(gateway).chat.completions.create(**values)  # type: ignore[call-overload]


def test_seed_repeats_sampled_output(gateway: RunningGateway) -> None:
    first = create(gateway, temperature=1.0, seed=7).choices[0].message.content
    second = create(gateway, temperature=1.0, seed=7).choices[0].message.content

    assert first == second


def test_n_returns_distinct_choices(gateway: RunningGateway) -> None:
    completion = create(gateway, n=2, temperature=1.0, seed=3, logprobs=True)
    tokens_per_choice = [len(choice.logprobs.content) for choice in completion.choices]

    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.choices[0].message.content != completion.choices[1].message.content
    assert completion.usage.completion_tokens == sum(tokens_per_choice)


def test_length_finish_reason_at_max_tokens(gateway: RunningGateway) -> None:
    completion = create(gateway, max_completion_tokens=3)

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_logprobs_per_generated_token(gateway: RunningGateway) -> None:
    completion = create(gateway, logprobs=True, top_logprobs=2)
    content = completion.choices[0].logprobs.content

    assert len(content) == completion.usage.completion_tokens
    assert all(entry.logprob <= 0 for entry in content)
    assert all(len(entry.top_logprobs) == 2 for entry in content)


def test_logit_bias_bans_greedy_token(gateway: RunningGateway, tiny_model_path: str) -> None:
    first_token = create(gateway, logprobs=True).choices[0].logprobs.content[0].token
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    token_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(first_token))[0]
    banned = create(gateway, logprobs=True, logit_bias={str(token_id): -100})

    assert banned.choices[0].logprobs.content[0].token != first_token


def test_stop_string_cuts_text(gateway: RunningGateway) -> None:
    full = create(gateway, max_tokens=8).choices[0].message.content
    stop = full[2:4]
    cut = create(gateway, max_tokens=8, stop=[stop]).choices[0]

    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_stream_n_two_indexes_chunks(gateway: RunningGateway) -> None:
    chunks = list(create(gateway, n=2, stream=True, stream_options={"include_usage": True}, logprobs=True))
    indexes = {choice.index for chunk in chunks for choice in chunk.choices}
    streamed_tokens = sum(
        len(choice.logprobs.content) for chunk in chunks for choice in chunk.choices if choice.logprobs is not None
    )

    assert indexes == {0, 1}
    assert chunks[-1].usage.completion_tokens == streamed_tokens


def test_async_client_chat(gateway: RunningGateway) -> None:
    async def run() -> str | None:
        client = AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
        completion = await client.chat.completions.create(model=TINY_MODEL_NAME, messages=USER, max_tokens=4)
        await client.close()
        return completion.choices[0].message.content

    assert asyncio.run(run())


def test_legacy_completion_text(gateway: RunningGateway) -> None:
    completion = client_for(gateway).completions.create(model=TINY_MODEL_NAME, prompt="Once upon", max_tokens=5)

    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens <= 5
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_legacy_completion_echo_and_logprobs(gateway: RunningGateway) -> None:
    completion = client_for(gateway).completions.create(
        model=TINY_MODEL_NAME, prompt="Once upon", max_tokens=4, echo=True, logprobs=2, temperature=0
    )
    choice = completion.choices[0]

    assert choice.text.startswith("Once upon")
    assert len(choice.logprobs.tokens) == completion.usage.completion_tokens
    assert choice.logprobs.text_offset[0] == len("Once upon")


def test_legacy_completion_prompt_list(gateway: RunningGateway) -> None:
    completion = client_for(gateway).completions.create(model=TINY_MODEL_NAME, prompt=["a", "b"], max_tokens=2, n=2)

    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]


def test_legacy_completion_streams(gateway: RunningGateway) -> None:
    stream = client_for(gateway).completions.create(model=TINY_MODEL_NAME, prompt="Hi", max_tokens=4, stream=True)
    chunks = list(stream)

    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_lists_partner_adapters(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "mia", redis_client)
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", default_headers={"X-Partner-ID": "mia"})
    ids = [model.id for model in client.models.list().data]
    adapter_model = client.models.retrieve(f"ft:{TINY_MODEL_NAME}:mia:1")

    assert ids == [TINY_MODEL_NAME, f"ft:{TINY_MODEL_NAME}:mia:1"]
    assert adapter_model.owned_by == "mia"
    assert adapter_model.parent == TINY_MODEL_NAME


def test_adapter_model_id_routes_version(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "noa", redis_client)
    register_adapter(tiny_settings, tiny_model_path, "noa", redis_client)
    raw = client_for(gateway).chat.completions.with_raw_response.create(
        model=f"ft:{TINY_MODEL_NAME}:noa:1", messages=USER, max_tokens=2, extra_headers={"X-Partner-ID": "noa"}
    )

    assert raw.headers["x-adapter"] == "noa/1"


def test_other_partners_adapter_not_found(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "olga", redis_client)

    with pytest.raises(openai.NotFoundError) as raised:
        create(gateway, model=f"ft:{TINY_MODEL_NAME}:olga:1", extra_headers={"X-Partner-ID": "pia"})
    assert raised.value.body["code"] == "model_not_found"


def test_overload_returns_503_retry_after(gateway: RunningGateway) -> None:
    engine = gateway.server.config.app.state.services.engine
    engine.pending_requests = engine.max_pending_requests
    try:
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json={"model": TINY_MODEL_NAME, "messages": USER}
        )
    finally:
        engine.pending_requests = 0

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "engine_overloaded"
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["param"] is None


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5": 500}}, "logit_bias", None),
        ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
        ({"max_tokens": 100000}, "max_tokens", "context_length_exceeded"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format", "unsupported_parameter"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ],
)
def test_invalid_field_named_in_error(gateway: RunningGateway, fields: dict, param: str, code: str | None) -> None:
    body = {"model": TINY_MODEL_NAME, "messages": USER, **fields}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"seed": 2**64}, "seed"), ({"seed": -(2**70)}, "seed"), ({"stream": "yes"}, "stream")],
)
def test_out_of_range_values_rejected(gateway: RunningGateway, fields: dict, param: str) -> None:
    body = {"model": TINY_MODEL_NAME, "messages": USER, **fields}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_tiny_temperature_decodes_greedily(gateway: RunningGateway) -> None:
    greedy = create(gateway, temperature=0).choices[0].message.content
    cold = create(gateway, temperature=1e-300).choices[0].message.content

    assert cold == greedy


def test_largest_seed_accepted(gateway: RunningGateway) -> None:
    completion = create(gateway, temperature=1.0, seed=2**63 - 1, n=2)

    assert len(completion.choices) == 2


def test_missing_adapter_files_fall_back(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    import shutil

    adapter = register_adapter(tiny_settings, tiny_model_path, "quinn", redis_client)
    shutil.rmtree(adapter.path)
    raw = client_for(gateway).chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=USER, max_tokens=2, extra_headers={"X-Partner-ID": "quinn"}
    )

    assert raw.http_response.status_code == 200
    assert raw.headers["x-adapter"] == "none"


def stored_job(tiny_settings: Settings, redis_client: redis.Redis, partner_id: str) -> tuple[JobStore, dict]:
    """Stores a job in validating_files, as the gateway does before it checks the job's data."""
    store = JobStore(redis_client, Keys(tiny_settings.key_prefix))
    job = new_job(job_id=new_job_id(), partner_id=partner_id, model=TINY_MODEL_NAME, hyperparameters={})
    return store, store.create(job)


def test_openai_client_reads_queued_job(gateway: RunningGateway) -> None:
    create(gateway, extra_headers={"X-Partner-ID": "sia"})
    job = httpx.post(f"{gateway.base_url}/v1/partners/sia/adapters").json()
    client = client_for(gateway)
    retrieved = client.fine_tuning.jobs.retrieve(job["id"])
    listed = client.fine_tuning.jobs.list(limit=100).data
    events = client.fine_tuning.jobs.list_events(job["id"]).data

    assert retrieved.status == "queued"
    assert retrieved.attempts == 0
    assert retrieved.error is None
    assert [item.id for item in listed] == [job["id"]]
    assert [event.message for event in events] == [
        "Job status: queued",
        "Validated training data: 1 session with 1 turn",
        "Training job created for partner sia",
    ]
    assert events[1].data == {"sessions": 1, "turns": 1}


def test_openai_client_reads_failed_validation(
    gateway: RunningGateway, tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.zadd(Keys(tiny_settings.key_prefix).sessions("tom"), {"sess-empty": 1})
    response = httpx.post(f"{gateway.base_url}/v1/partners/tom/adapters")
    retrieved = client_for(gateway).fine_tuning.jobs.retrieve(response.json()["id"])

    assert response.status_code == 200
    assert retrieved.status == "failed"
    assert retrieved.error.code == "invalid_training_data"
    assert retrieved.error.param is None
    assert "X-Partner-ID: tom" in retrieved.error.message
    assert retrieved.finished_at is not None


def test_openai_client_cancels_validating_job(
    gateway: RunningGateway, tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    _, job = stored_job(tiny_settings, redis_client, "uli")
    client = client_for(gateway)
    before = client.fine_tuning.jobs.retrieve(job["id"])
    cancelled = client.fine_tuning.jobs.cancel(job["id"])
    events = client.fine_tuning.jobs.list_events(job["id"]).data

    assert before.status == "validating_files"
    assert cancelled.status == "cancelled"
    assert events[0].message == "Job status: cancelled"
    assert redis_client.get(Keys(tiny_settings.key_prefix).partner_open_job("uli")) is None


def test_openai_client_reads_requeued_job(
    gateway: RunningGateway, tiny_settings: Settings, redis_client: redis.Redis, queue_client: redis.Redis
) -> None:
    from rq.job import Job, JobStatus

    from trainer.queueing import queue_validated_job

    store, job = stored_job(tiny_settings, redis_client, "vera")
    queue_validated_job(store, queue_client, job["id"], queue_name=tiny_settings.queue_name, timeout_s=60)
    Job.fetch(job["id"], connection=queue_client).set_status(JobStatus.FAILED)
    client = client_for(gateway)
    retrieved = client.fine_tuning.jobs.retrieve(job["id"])
    events = client.fine_tuning.jobs.list_events(job["id"], limit=1).data

    assert retrieved.status == "queued"
    assert retrieved.attempts == 1
    assert events[0].level == "warn"
    assert (
        events[0].message
        == "Requeued: the worker stopped while running the job, and RQ marked it failed (attempt 1 of 3)"
    )
