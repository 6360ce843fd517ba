"""Training jobs on a real RQ queue: enqueueing once, and requeueing jobs whose worker was lost."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from adapters.keys import Keys
from adapters.settings import Settings
from tests.conftest import REDIS_URL
from trainer import worker
from trainer.jobs import JobStore, new_job, new_job_id
from trainer.queueing import (
    MISSING_FROM_QUEUE_GRACE_S,
    enqueue_training,
    queue_validated_job,
    reconcile_with_queue,
    requeue_lost_jobs,
)

MAX_ATTEMPTS = 3


@pytest.fixture()
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, Keys(key_prefix))


@pytest.fixture()
def queue(queue_client: redis.Redis, key_prefix: str) -> Queue:
    return Queue(f"training-{key_prefix}", connection=queue_client)


def queued_job(store: JobStore, queue: Queue, partner_id: str = "alice") -> dict[str, Any]:
    """Stores a job past validation and puts it on ``queue``, as start_training_job does."""
    job = store.create(new_job(job_id=new_job_id(), partner_id=partner_id, model="m", hyperparameters={}))
    return queue_validated_job(store, queue.connection, job["id"], queue_name=queue.name, timeout_s=60)


def kill_worker_of(job_id: str, queue: Queue, worker_name: str) -> None:
    """Leaves the RQ job as a worker that died mid-run does: started, by a worker that no longer heartbeats."""
    queued = Job.fetch(job_id, connection=queue.connection)
    queue.remove(job_id)
    queued.worker_name = worker_name
    queued.save()
    queued.set_status(JobStatus.STARTED)


def fail_in_queue(job_id: str, queue: Queue) -> None:
    """Leaves the RQ job as RQ does when a work horse is killed: failed, in the failed registry."""
    queued = Job.fetch(job_id, connection=queue.connection)
    queue.remove(job_id)
    queued.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(queued, ttl=600, exc_string="work horse killed")


def reconcile(store: JobStore, queue: Queue, job_id: str, max_attempts: int = MAX_ATTEMPTS) -> dict[str, Any]:
    return reconcile_with_queue(
        store, queue.connection, store.get(job_id), queue_name=queue.name, timeout_s=60, max_attempts=max_attempts
    )


def event_messages(store: JobStore, job_id: str) -> list[str]:
    return [event["message"] for event in reversed(store.events(job_id, limit=100))]


def test_validated_job_enqueued_once(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)

    assert job["status"] == "queued"
    assert queue.job_ids == [job["id"]]
    assert Job.fetch(job["id"], connection=queue.connection).get_status() == JobStatus.QUEUED


def test_duplicate_enqueue_rejected(store: JobStore, queue: Queue) -> None:
    from rq.exceptions import DuplicateJobError

    job = queued_job(store, queue)

    with pytest.raises(DuplicateJobError):
        enqueue_training(queue.connection, queue_name=queue.name, job_id=job["id"], timeout_s=60)
    assert queue.job_ids == [job["id"]]


def test_cancelled_validating_job_not_enqueued(store: JobStore, queue: Queue) -> None:
    job = store.create(new_job(job_id=new_job_id(), partner_id="alice", model="m", hyperparameters={}))
    store.cancel(queue.connection, job["id"])
    returned = queue_validated_job(store, queue.connection, job["id"], queue_name=queue.name, timeout_s=60)

    assert returned["status"] == "cancelled"
    assert queue.job_ids == []
    assert Job.exists(job["id"], connection=queue.connection) is False


def test_queued_job_left_open(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "queued"
    assert reconciled["attempts"] == 0


def test_dead_worker_job_requeued(store: JobStore, queue: Queue, key_prefix: str) -> None:
    job = queued_job(store, queue)
    store.set_status(job["id"], "running")
    kill_worker_of(job["id"], queue, f"gone-{key_prefix}")
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "queued"
    assert reconciled["attempts"] == 1
    assert reconciled["error"] is None
    assert queue.job_ids == [job["id"]]
    assert Job.fetch(job["id"], connection=queue.connection).get_status() == JobStatus.QUEUED
    assert Job.fetch(job["id"], connection=queue.connection).worker_name is None
    assert event_messages(store, job["id"])[-1] == (
        f"Requeued: the worker running the job (gone-{key_prefix}) stopped (attempt 1 of 3)"
    )


def test_failed_in_queue_job_requeued(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    fail_in_queue(job["id"], queue)
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "queued"
    assert reconciled["attempts"] == 1
    assert queue.job_ids == [job["id"]]
    assert queue.failed_job_registry.get_job_ids() == []
    assert store.events(job["id"], limit=1)[0]["level"] == "warn"


def test_job_never_enqueued_requeued(store: JobStore, queue: Queue) -> None:
    job = new_job(job_id=new_job_id(), partner_id="alice", model="m", hyperparameters={})
    job["created_at"] -= MISSING_FROM_QUEUE_GRACE_S + 1
    store.create(job)
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "queued"
    assert reconciled["attempts"] == 1
    assert queue.job_ids == [job["id"]]
    assert event_messages(store, job["id"])[-1] == ("Requeued: the job was not in the training queue (attempt 1 of 3)")


def test_new_validating_job_left_alone(store: JobStore, queue: Queue) -> None:
    job = store.create(new_job(job_id=new_job_id(), partner_id="alice", model="m", hyperparameters={}))
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "validating_files"
    assert queue.job_ids == []


def test_job_fails_after_max_attempts(store: JobStore, queue: Queue, key_prefix: str) -> None:
    job = queued_job(store, queue)
    store.update(job["id"], attempts=MAX_ATTEMPTS)
    kill_worker_of(job["id"], queue, f"gone-{key_prefix}")
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "failed"
    assert reconciled["attempts"] == MAX_ATTEMPTS
    assert reconciled["error"]["code"] == "worker_lost"
    assert reconciled["error"]["param"] is None
    assert "already requeued 3 times (max_attempts)" in reconciled["error"]["message"]
    assert queue.job_ids == []
    assert store.open_jobs() == []


def test_zero_max_attempts_fails_at_once(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    fail_in_queue(job["id"], queue)
    reconciled = reconcile(store, queue, job["id"], max_attempts=0)

    assert reconciled["status"] == "failed"
    assert reconciled["error"]["code"] == "worker_lost"


def test_stopped_in_queue_not_requeued(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    queue.remove(job["id"])
    Job.fetch(job["id"], connection=queue.connection).set_status(JobStatus.STOPPED)
    reconciled = reconcile(store, queue, job["id"])

    assert reconciled["status"] == "failed"
    assert reconciled["error"]["code"] == "stopped_in_queue"
    assert reconciled["attempts"] == 0
    assert queue.job_ids == []


def test_second_reconcile_keeps_attempts(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    fail_in_queue(job["id"], queue)
    reconcile(store, queue, job["id"])
    again = reconcile(store, queue, job["id"])

    assert again["status"] == "queued"
    assert again["attempts"] == 1
    assert queue.job_ids == [job["id"]]


def test_held_lock_skips_reconcile(store: JobStore, queue: Queue) -> None:
    job = queued_job(store, queue)
    fail_in_queue(job["id"], queue)
    lock = store.client.lock(store.keys.job_queue_lock(job["id"]), timeout=30)
    assert lock.acquire(blocking=False)
    try:
        reconciled = reconcile(store, queue, job["id"])
    finally:
        lock.release()

    assert reconciled["status"] == "queued"
    assert reconciled["attempts"] == 0
    assert queue.job_ids == []


def test_concurrent_reconciles_enqueue_once(store: JobStore, queue: Queue, key_prefix: str) -> None:
    job = queued_job(store, queue)
    kill_worker_of(job["id"], queue, f"gone-{key_prefix}")
    stale = store.get(job["id"])
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def reconcile_with_own_connections() -> None:
        # Separate connections, as separate gateway and worker processes would have.
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        own_queue_client = redis.Redis.from_url(REDIS_URL)
        start.wait()
        try:
            reconcile_with_queue(
                JobStore(client, Keys(key_prefix)),
                own_queue_client,
                stale,
                queue_name=queue.name,
                timeout_s=60,
                max_attempts=MAX_ATTEMPTS,
            )
        except Exception as error:
            errors.append(error)
        finally:
            client.close()
            own_queue_client.close()

    threads = [threading.Thread(target=reconcile_with_own_connections) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    requeue_events = [message for message in event_messages(store, job["id"]) if message.startswith("Requeued")]
    assert errors == []
    assert store.get(job["id"])["attempts"] == 1
    assert queue.job_ids == [job["id"]]
    assert len(requeue_events) == 1


def test_requeue_lost_jobs_scans_open_jobs(store: JobStore, queue: Queue, key_prefix: str) -> None:
    lost = queued_job(store, queue, "alice")
    healthy = queued_job(store, queue, "bob")
    finished = queued_job(store, queue, "carol")
    store.set_status(finished["id"], "succeeded")
    kill_worker_of(lost["id"], queue, f"gone-{key_prefix}")
    changed = requeue_lost_jobs(store, queue.connection, queue_name=queue.name, timeout_s=60, max_attempts=3)

    assert [job["id"] for job in changed] == [lost["id"]]
    assert changed[0]["attempts"] == 1
    assert store.get(healthy["id"])["attempts"] == 0
    assert store.get(finished["id"])["status"] == "succeeded"
    assert queue.job_ids.count(lost["id"]) == 1
    assert queue.job_ids.count(healthy["id"]) == 1


def test_requeued_job_runs_again(
    tiny_settings: Settings, store: JobStore, queue: Queue, redis_client: redis.Redis, key_prefix: str
) -> None:
    keys = Keys(tiny_settings.key_prefix)
    turn = {"messages": [{"role": "user", "content": "hello"}], "response": {"role": "assistant", "content": "OK."}}
    redis_client.zadd(keys.sessions("alice"), {"sess-1": 1})
    redis_client.rpush(keys.session_turns("alice", "sess-1"), json.dumps(turn))
    job = queued_job(store, queue)
    store.set_status(job["id"], "running")
    kill_worker_of(job["id"], queue, f"gone-{key_prefix}")
    reconcile(store, queue, job["id"])
    worker.configure(tiny_settings)
    SimpleWorker([queue], connection=queue.connection, name=f"worker-{key_prefix}").work(burst=True)

    finished = store.get(job["id"])
    messages = event_messages(store, job["id"])
    requeued_at = next(index for index, message in enumerate(messages) if message.startswith("Requeued"))
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "insufficient_data"
    assert finished["attempts"] == 1
    assert "Job status: running" in messages[requeued_at:]
    assert Job.fetch(job["id"], connection=queue.connection).get_status() == JobStatus.FINISHED
