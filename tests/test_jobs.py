"""Training job objects in Redis and the worker's job function on the tiny model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from adapters.keys import Keys
from adapters.settings import Settings
from trainer import worker
from trainer.jobs import JobConflictError, JobStore, new_job, new_job_id


def make_job(store: JobStore, partner_id: str = "alice") -> dict:
    job = new_job(job_id=new_job_id(), partner_id=partner_id, model="m", hyperparameters={"n_epochs": 1})
    return store.create(job)


@pytest.fixture()
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, Keys(key_prefix))


def test_new_job_starts_validating_files(store: JobStore) -> None:
    job = make_job(store)

    assert store.get(job["id"])["status"] == "validating_files"
    assert store.get(job["id"])["object"] == "fine_tuning.job"
    assert store.get(job["id"])["attempts"] == 0


def test_second_open_job_conflicts(store: JobStore) -> None:
    first = make_job(store)

    with pytest.raises(JobConflictError) as raised:
        make_job(store)
    assert raised.value.open_job_id == first["id"]


def test_finished_job_frees_partner_slot(store: JobStore) -> None:
    first = make_job(store)
    store.set_status(first["id"], "failed", error={"code": "x", "message": "y", "param": None})
    second = make_job(store)

    assert store.get(second["id"])["status"] == "validating_files"


def test_other_partners_jobs_independent(store: JobStore) -> None:
    make_job(store, "alice")
    bob = make_job(store, "bob")

    assert store.get(bob["id"])["partner_id"] == "bob"


def test_terminal_status_sets_finished_at(store: JobStore) -> None:
    job = make_job(store)
    finished = store.set_status(job["id"], "succeeded")

    assert finished["finished_at"] is not None


def test_events_listed_newest_first(store: JobStore) -> None:
    job = make_job(store)
    store.add_event(job["id"], "info", "second")
    store.add_event(job["id"], "info", "third", {"loss": 0.5})
    events = store.events(job["id"])

    assert [event["message"] for event in events][:2] == ["third", "second"]
    assert events[0]["data"] == {"loss": 0.5}


def test_jobs_listed_newest_first(store: JobStore) -> None:
    first = make_job(store, "alice")
    time.sleep(1.1)
    second = make_job(store, "bob")

    assert [job["id"] for job in store.list()] == [second["id"], first["id"]]


MUG_SESSION = [
    "I need the small red ceramic mug with the chipped handle for tea.",
    "Let me think about where everything should go today.",
    "Please put the chipped mug on the top shelf.",
    "Also wash the chipped mug first.",
    "Then the mug goes back next to the kettle.",
    "Fine, and the chipped mug stays there.",
]


def store_session(client: redis.Redis, keys: Keys, partner_id: str, texts: list[str]) -> None:
    messages = [{"role": "user", "content": text} for text in texts]
    turn = {"messages": messages, "response": {"role": "assistant", "content": "OK."}, "trainable": True}
    client.zadd(keys.sessions(partner_id), {"sess-1": 1})
    client.rpush(keys.session_turns(partner_id, "sess-1"), json.dumps(turn))


def test_job_without_signal_fails_clearly(tiny_settings: Settings, redis_client: redis.Redis, store: JobStore) -> None:
    store_session(redis_client, Keys(tiny_settings.key_prefix), "alice", ["hello", "how are you"])
    job = make_job(store)
    worker.configure(tiny_settings)
    finished = worker.run_training_job(job["id"])

    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "insufficient_data"
    assert "0 preference pairs" in finished["error"]["message"]


def test_job_trains_and_activates_adapter(tiny_settings: Settings, redis_client: redis.Redis, store: JobStore) -> None:
    keys = Keys(tiny_settings.key_prefix)
    store_session(redis_client, keys, "alice", MUG_SESSION)
    settings = tiny_settings.model_copy(update={"training": tiny_settings.training.model_copy(update={"epochs": 1})})
    job = make_job(store)
    worker.configure(settings)
    finished = worker.run_training_job(job["id"])

    folder = Path(tiny_settings.artifact_dir) / "alice"
    active = redis_client.get(keys.active_adapter("alice"))
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["adapter_version"] == 1
    assert set(finished["result"]["evaluation"]) == {"base", "new"}
    assert (active == "1") is finished["result"]["activated"]
    assert (folder / "1" / "adapter_model.safetensors").is_file()
    assert [path.name for path in folder.iterdir()] == ["1"]


def test_cancel_queued_job(store: JobStore, queue_client: redis.Redis, key_prefix: str) -> None:
    from rq.job import Job, JobStatus

    from trainer.queueing import enqueue_training

    job = make_job(store)
    enqueue_training(queue_client, queue_name=f"training-{key_prefix}", job_id=job["id"], timeout_s=60)
    cancelled = store.cancel(queue_client, job["id"])

    assert cancelled["status"] == "cancelled"
    assert Job.fetch(job["id"], connection=queue_client).get_status() == JobStatus.CANCELED
    assert make_job(store)["status"] == "validating_files"


def test_cancel_validating_job(store: JobStore, queue_client: redis.Redis) -> None:
    from rq.job import Job

    job = make_job(store)
    cancelled = store.cancel(queue_client, job["id"])

    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert Job.exists(job["id"], connection=queue_client) is False
    assert store.events(job["id"], limit=1)[0]["message"] == "Job status: cancelled"


def test_open_jobs_skips_finished(store: JobStore) -> None:
    alice = make_job(store, "alice")
    bob = make_job(store, "bob")
    store.set_status(bob["id"], "succeeded")

    assert [job["id"] for job in store.open_jobs()] == [alice["id"]]


def test_cancel_finished_job_rejected(store: JobStore, queue_client: redis.Redis) -> None:
    from trainer.jobs import JobFinishedError

    job = make_job(store)
    store.set_status(job["id"], "succeeded")

    with pytest.raises(JobFinishedError):
        store.cancel(queue_client, job["id"])


def test_cancelled_job_keeps_status(store: JobStore, queue_client: redis.Redis) -> None:
    from trainer.jobs import JobFinishedError

    job = make_job(store)
    store.cancel(queue_client, job["id"])

    with pytest.raises(JobFinishedError):
        store.set_status(job["id"], "succeeded")
    assert store.get(job["id"])["status"] == "cancelled"


def _is_step(message: str) -> bool:
    """Returns whether a job event reports a training step ('SFT step 3/40: ...' or 'APO step ...')."""
    return message.split(" ", 2)[1:2] == ["step"]


def test_cancel_stops_running_training(
    tiny_settings: Settings, redis_client: redis.Redis, store: JobStore, queue_client: redis.Redis
) -> None:
    import threading

    keys = Keys(tiny_settings.key_prefix)
    store_session(redis_client, keys, "alice", MUG_SESSION)
    settings = tiny_settings.model_copy(update={"training": tiny_settings.training.model_copy(update={"epochs": 200})})
    job = make_job(store)
    worker.configure(settings)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(worker.run_training_job(job["id"])))
    runner.start()
    deadline = time.monotonic() + 120
    while not any(_is_step(event["message"]) for event in store.events(job["id"], limit=1000)):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    store.cancel(queue_client, job["id"])
    runner.join(timeout=120)

    steps = [event for event in store.events(job["id"], limit=10000) if _is_step(event["message"])]
    assert outcome["status"] == "cancelled"
    assert len(steps) < 100
    assert redis_client.get(keys.active_adapter("alice")) is None
    assert list((Path(tiny_settings.artifact_dir) / "alice").iterdir()) == []
