"""Training jobs on the RQ queue: enqueueing, and requeueing jobs whose worker was lost.

Every move of a job onto the queue (after validation, or a requeue) runs under the job's queue lock in Redis,
so processes that reconcile the same job at once enqueue it only once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from rq import Queue, Worker
from rq.callbacks import Callback
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from trainer.jobs import OPEN_STATUSES, JobFinishedError, JobStore

logger = logging.getLogger(__name__)

WORKER_FUNCTION = "trainer.worker.run_training_job"
FAILURE_CALLBACK = "trainer.worker.on_rq_failure"
# An open job with no RQ job this long after creation was lost before it reached the queue (its creator died
# or enqueueing failed half-way). Validation before the first enqueue only counts stored sessions and turns.
MISSING_FROM_QUEUE_GRACE_S = 60
# Seconds a process may hold a job's queue lock. Holders release it within milliseconds, and the expiry frees a
# lock whose holder died.
QUEUE_LOCK_TIMEOUT_S = 30
# RQ statuses that an open job gets only from an operator using RQ itself (a stop-job command, a cancel). This
# product cancels an RQ job only after it marked the job cancelled, and then the job is no longer open.
_STOPPED_IN_QUEUE = (JobStatus.STOPPED, JobStatus.CANCELED)
_RESULT_TTL_S = 7 * 24 * 3600


def enqueue_training(queue_client: redis.Redis, *, queue_name: str, job_id: str, timeout_s: int) -> None:
    """Put a stored training job on the RQ queue that ``convention-gateway worker`` consumes.

    Raises rq.exceptions.DuplicateJobError when an RQ job with this id already exists.
    """
    queue = Queue(queue_name, connection=queue_client)
    queue.enqueue(
        WORKER_FUNCTION,
        job_id,
        job_id=job_id,
        job_timeout=timeout_s,
        result_ttl=_RESULT_TTL_S,
        failure_ttl=_RESULT_TTL_S,
        on_failure=Callback(FAILURE_CALLBACK),
        unique=True,
    )
    logger.info("Job %s: enqueued on %s", job_id, queue_name)


def queue_validated_job(
    store: JobStore, queue_client: redis.Redis, job_id: str, *, queue_name: str, timeout_s: int
) -> dict[str, Any]:
    """Moves a job from validating_files to queued and enqueues it; returns the stored job.

    A job that was cancelled or requeued in the meantime is returned as it is, and nothing is enqueued. Raises
    redis.RedisError when enqueueing fails, after marking the job failed with code enqueue_failed.
    """
    with _queue_lock(store, job_id, wait_s=QUEUE_LOCK_TIMEOUT_S) as acquired:
        current = store.get(job_id)
        if current is None:
            raise KeyError(job_id)
        if not acquired:
            # The job stays in validating_files, so a later reconcile requeues it once the grace period is over.
            logger.warning("Job %s: queue lock still held after %d s, not enqueued", job_id, QUEUE_LOCK_TIMEOUT_S)
            return current
        if current["status"] != "validating_files":
            return current
        try:
            queued = store.set_status(job_id, "queued")
        except JobFinishedError:
            return store.get(job_id) or current

        try:
            enqueue_training(queue_client, queue_name=queue_name, job_id=job_id, timeout_s=timeout_s)
        except redis.RedisError as error:
            logger.error("Job %s: enqueueing failed for partner %s: %s", job_id, current["partner_id"], error)
            failure = {"code": "enqueue_failed", "message": f"enqueueing the job failed: {error}", "param": None}
            store.set_status(job_id, "failed", error=failure)
            raise
        return queued


def reconcile_with_queue(
    store: JobStore,
    queue_client: redis.Redis,
    job: dict[str, Any],
    *,
    queue_name: str,
    timeout_s: int,
    max_attempts: int,
) -> dict[str, Any]:
    """Requeues an open job that RQ reports lost, or fails it after ``max_attempts`` requeues; returns the job.

    A job is lost when its worker stopped heartbeating while running it, when RQ failed it without the job
    recording the failure (a killed work horse), or when it is missing from the queue after the grace period.
    A process that finds another one reconciling the same job returns the stored job unchanged.
    """
    if job["status"] not in OPEN_STATUSES or _find_loss(queue_client, job) is None:
        return job

    with _queue_lock(store, job["id"], wait_s=None) as acquired:
        current = store.get(job["id"])
        if not acquired or current is None or current["status"] not in OPEN_STATUSES:
            return current or job

        # Checked again under the lock: another process may have requeued the job since the first check.
        loss = _find_loss(queue_client, current)
        if loss is None:
            return current
        code, reason = loss
        if code == "stopped_in_queue":
            return _fail(store, current, code, f"{reason}; start a new job")
        attempts = int(current.get("attempts", 0))
        if attempts >= max_attempts:
            message = f"{reason}, and it was already requeued {attempts} times (max_attempts); start a new job"
            return _fail(store, current, "worker_lost", message)
        return _requeue(
            store, queue_client, current, reason, queue_name=queue_name, timeout_s=timeout_s, max_attempts=max_attempts
        )


def requeue_lost_jobs(
    store: JobStore, queue_client: redis.Redis, *, queue_name: str, timeout_s: int, max_attempts: int
) -> list[dict[str, Any]]:
    """Reconciles every open job with the queue; returns the jobs it requeued or failed.

    Several processes may run it at once, because the job's queue lock and RQ's unique enqueue keep each job on the
    queue once.
    """
    open_jobs = store.open_jobs()
    changed = []
    for job in open_jobs:
        try:
            reconciled = reconcile_with_queue(
                store, queue_client, job, queue_name=queue_name, timeout_s=timeout_s, max_attempts=max_attempts
            )
        except redis.RedisError as error:
            logger.error("Job %s: reconciling with the queue failed: %s", job["id"], error)
            continue
        if (reconciled["status"], reconciled.get("attempts")) != (job["status"], job.get("attempts")):
            changed.append(reconciled)
    logger.info("Reconciled %d open training jobs with queue %s: %d changed", len(open_jobs), queue_name, len(changed))
    return changed


def _find_loss(queue_client: redis.Redis, job: dict[str, Any]) -> tuple[str, str] | None:
    """Returns (error code, reason) when RQ shows that the job's run ended without the job recording it."""
    try:
        queued: Job | None = Job.fetch(job["id"], connection=queue_client)
    except NoSuchJobError:
        queued = None
    queue_status = queued.get_status() if queued is not None else None

    if queue_status is not None and queue_status in _STOPPED_IN_QUEUE:
        return "stopped_in_queue", f"the job was stopped through RQ, not this API (queue status {queue_status.value})"
    if queue_status == JobStatus.FAILED:
        # The work horse was killed, or another worker moved the abandoned job to RQ's failed registry.
        return "worker_lost", "the worker stopped while running the job, and RQ marked it failed"
    if queue_status == JobStatus.STARTED and queued is not None and not _worker_alive(queue_client, queued):
        # NOTE: a work horse outlives its worker when only the worker process is killed (RQ puts the horse in
        # its own process group), so the requeued run may train while the old horse still does.
        return "worker_lost", f"the worker running the job ({queued.worker_name}) stopped"
    if queue_status is None and time.time() - job["created_at"] > MISSING_FROM_QUEUE_GRACE_S:
        return "worker_lost", "the job was not in the training queue"
    return None


def _worker_alive(queue_client: redis.Redis, queued: Job) -> bool:
    """Returns whether the worker that started ``queued`` still heartbeats (its key expires when it dies)."""
    if not queued.worker_name:
        return True
    return bool(queue_client.exists(Worker.redis_worker_namespace_prefix + queued.worker_name))


def _requeue(
    store: JobStore,
    queue_client: redis.Redis,
    job: dict[str, Any],
    reason: str,
    *,
    queue_name: str,
    timeout_s: int,
    max_attempts: int,
) -> dict[str, Any]:
    attempt = int(job.get("attempts", 0)) + 1
    try:
        requeued = store.set_status(job["id"], "queued", attempts=attempt)
    except JobFinishedError:
        # Cancelled since it was read: nothing to requeue.
        return store.get(job["id"]) or job
    store.add_event(job["id"], "warn", f"Requeued: {reason} (attempt {attempt} of {max_attempts})")
    logger.warning("Job %s: requeued, %s (attempt %d of %d)", job["id"], reason, attempt, max_attempts)

    # RQ would otherwise keep the old job's registry entries, and a later cleanup of the started registry
    # would fail the new run.
    try:
        Job.fetch(job["id"], connection=queue_client).delete()
    except NoSuchJobError:
        pass
    try:
        enqueue_training(queue_client, queue_name=queue_name, job_id=job["id"], timeout_s=timeout_s)
    except DuplicateJobError:
        logger.warning("Job %s: already back on the queue, not enqueued again", job["id"])
    return requeued


def _fail(store: JobStore, job: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    logger.warning("Job %s: failed, %s (partner %s)", job["id"], message, job["partner_id"])
    try:
        return store.set_status(job["id"], "failed", error={"code": code, "message": message, "param": None})
    except JobFinishedError:
        return store.get(job["id"]) or job


@contextmanager
def _queue_lock(store: JobStore, job_id: str, *, wait_s: float | None) -> Iterator[bool]:
    """Holds the job's queue lock, waiting up to ``wait_s`` seconds (None: not at all); yields whether it got it."""
    lock = store.client.lock(
        store.keys.job_queue_lock(job_id),
        timeout=QUEUE_LOCK_TIMEOUT_S,
        blocking=wait_s is not None,
        blocking_timeout=wait_s,
    )
    acquired = bool(lock.acquire())
    try:
        yield acquired
    finally:
        if acquired:
            _release(lock, job_id)


def _release(lock: Any, job_id: str) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:
        logger.warning("Job %s: queue lock expired before it was released", job_id)
