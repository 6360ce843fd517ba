"""Starting training jobs: on request, and automatically when a partner has enough new turns.

Both paths create the job the same way: one open job per partner, a job whose worker died does not block,
and the partner's count of new turns starts again from zero.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from adapters.keys import Keys
from adapters.settings import Settings
from trainer.jobs import (
    OPEN_STATUSES,
    JobConflictError,
    JobStore,
    enqueue_training,
    new_job,
    new_job_id,
    reconcile_with_queue,
)

logger = logging.getLogger(__name__)


def start_training_job(
    *, settings: Settings, jobs: JobStore, queue_client: redis.Redis, partner_id: str, reason: str
) -> dict[str, Any]:
    """Creates and enqueues the partner's next training job; raises JobConflictError if one is open."""
    job = new_job(
        job_id=new_job_id(),
        partner_id=partner_id,
        model=settings.require_local_model().model_name,
        hyperparameters=_hyperparameters(settings),
    )
    job["metadata"]["reason"] = reason
    try:
        jobs.create(job)
    except JobConflictError as error:
        if not _open_job_ended(error.open_job_id, jobs, queue_client):
            raise
        jobs.create(job)

    try:
        enqueue_training(
            queue_client, queue_name=settings.queue_name, job_id=job["id"], timeout_s=settings.job_timeout_s
        )
    except redis.RedisError as error:
        logger.error("Job %s: enqueueing failed for partner %s: %s", job["id"], partner_id, error)
        failure = {"code": "enqueue_failed", "message": f"enqueueing the job failed: {error}", "param": None}
        jobs.set_status(job["id"], "failed", error=failure)
        raise

    stats = jobs.keys.partner_stats(partner_id)
    jobs.client.hset(stats, mapping={"new_turns": 0, "last_job_at": job["created_at"]})
    logger.info("Job %s: created for partner %s (%s)", job["id"], partner_id, reason)
    return job


def _hyperparameters(settings: Settings) -> dict[str, Any]:
    return {
        "n_epochs": settings.training.epochs,
        "batch_size": settings.training.batch_size,
        "learning_rate": settings.training.learning_rate,
        "beta": settings.training.beta,
        "lora_rank": settings.training.lora_rank,
        "seed": settings.training.seed,
    }


def _open_job_ended(job_id: str, jobs: JobStore, queue_client: redis.Redis) -> bool:
    """Returns True when the job blocking a new one turns out to have ended in the queue (a killed worker)."""
    job = jobs.get(job_id)
    if job is None:
        return True
    return reconcile_with_queue(jobs, queue_client, job)["status"] not in OPEN_STATUSES


def auto_training_enabled(client: redis.Redis, keys: Keys, partner_id: str) -> bool:
    """Returns the partner's own auto_training setting (on unless the partner opted out)."""
    return client.hget(keys.partner_settings(partner_id), "auto_training") != "0"


def consider_automatic_job(
    *, settings: Settings, jobs: JobStore, queue_client: redis.Redis, partner_id: str, new_turns: int
) -> dict[str, Any] | None:
    """Starts a job when the training policy allows it; returns the job, or None when none was started."""
    policy = settings.training_policy
    if not policy.auto_training or new_turns < policy.min_new_turns or settings.local_model is None:
        return None
    if partner_id == settings.anonymous_partner_id or not auto_training_enabled(jobs.client, jobs.keys, partner_id):
        return None

    last_job_at = float(jobs.client.hget(jobs.keys.partner_stats(partner_id), "last_job_at") or 0)
    if time.time() - last_job_at < policy.cooldown_s:
        return None
    try:
        return start_training_job(
            settings=settings,
            jobs=jobs,
            queue_client=queue_client,
            partner_id=partner_id,
            reason=f"automatic: {new_turns} new turns",
        )
    except JobConflictError:
        return None
