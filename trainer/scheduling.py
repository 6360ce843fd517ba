"""Starting training jobs: on request, and automatically when a partner has enough new turns.

Both paths create the job the same way: it is stored in validating_files, its data is checked and it is
queued. A partner has one open job at a time, and a job whose worker was lost keeps blocking while it is requeued.
The partner's count of new turns then starts again from zero.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from adapters.keys import Keys
from adapters.settings import Settings
from trainer.jobs import OPEN_STATUSES, JobConflictError, JobFinishedError, JobStore, new_job, new_job_id
from trainer.queueing import queue_validated_job, reconcile_with_queue
from trainer.validation import InvalidTrainingDataError, validate_training_data

logger = logging.getLogger(__name__)


def start_training_job(
    *, settings: Settings, jobs: JobStore, queue_client: redis.Redis, partner_id: str, reason: str
) -> dict[str, Any]:
    """Creates the partner's next training job, validates its data and enqueues it; returns the stored job.

    The job is stored in validating_files first. It ends up queued, or failed with code invalid_training_data
    and not enqueued when the data check fails, or cancelled when a cancel came during validation. Raises
    JobConflictError when the partner has another open job, and redis.RedisError when enqueueing fails.
    """
    local_model = settings.local_model
    job = new_job(
        job_id=new_job_id(),
        partner_id=partner_id,
        # Without a local model the job fails validation below, with a message that names the fix.
        model=local_model.model_name if local_model is not None else "",
        hyperparameters=_hyperparameters(settings),
    )
    job["metadata"]["reason"] = reason
    try:
        jobs.create(job)
    except JobConflictError as error:
        if not _open_job_ended(error.open_job_id, settings, jobs, queue_client):
            raise
        jobs.create(job)
    logger.info("Job %s: created for partner %s (%s)", job["id"], partner_id, reason)

    try:
        summary = validate_training_data(jobs.client, jobs.keys, settings=settings, partner_id=partner_id)
    except InvalidTrainingDataError as error:
        logger.warning("Job %s: invalid training data, %s", job["id"], error)
        stored = _set_failed(jobs, job["id"], error)
    else:
        jobs.add_event(
            job["id"],
            "info",
            f"Validated training data: {summary.describe()}",
            {"sessions": summary.sessions, "turns": summary.turns},
        )
        stored = queue_validated_job(
            jobs, queue_client, job["id"], queue_name=settings.queue_name, timeout_s=settings.job_timeout_s
        )

    stats = jobs.keys.partner_stats(partner_id)
    jobs.client.hset(stats, mapping={"new_turns": 0, "last_job_at": job["created_at"]})
    return stored


def _set_failed(jobs: JobStore, job_id: str, error: InvalidTrainingDataError) -> dict[str, Any]:
    try:
        return jobs.set_status(job_id, "failed", error=error.error_object())
    except JobFinishedError:
        # Cancelled during validation, so the job stays cancelled.
        stored = jobs.get(job_id)
        if stored is None:
            raise KeyError(job_id) from None
        return stored


def _hyperparameters(settings: Settings) -> dict[str, Any]:
    return {
        "n_epochs": settings.training.epochs,
        "batch_size": settings.training.batch_size,
        "learning_rate": settings.training.learning_rate,
        "beta": settings.training.beta,
        "lora_rank": settings.training.lora_rank,
        "seed": settings.training.seed,
    }


def _open_job_ended(job_id: str, settings: Settings, jobs: JobStore, queue_client: redis.Redis) -> bool:
    """Returns True when the job blocking a new one turns out to have ended (a lost worker, out of attempts).

    A blocking job whose worker was lost is requeued and stays open, so it keeps blocking.
    """
    job = jobs.get(job_id)
    if job is None:
        return True
    reconciled = reconcile_with_queue(
        jobs,
        queue_client,
        job,
        queue_name=settings.queue_name,
        timeout_s=settings.job_timeout_s,
        max_attempts=settings.training_policy.max_attempts,
    )
    return reconciled["status"] not in OPEN_STATUSES


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
