"""Training jobs in the shape of OpenAI's fine-tuning API."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from gateway.errors import APIError
from gateway.services import Services, get_services
from trainer.jobs import JobFinishedError
from trainer.queueing import reconcile_with_queue

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
ServicesDep = Annotated[Services, Depends(get_services)]


JOB_ID_PATTERN = re.compile(r"^ftjob-[A-Za-z0-9]{1,64}$")


async def _job_or_404(job_id: str, services: Services) -> dict[str, Any]:
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise APIError(404, f"training job {job_id!r} not found", param="job_id", code="job_not_found")
    job = await asyncio.to_thread(services.jobs.get, job_id)
    if job is None:
        raise APIError(404, f"training job {job_id!r} not found", param="job_id", code="job_not_found")
    settings = services.settings
    return await asyncio.to_thread(
        reconcile_with_queue,
        services.jobs,
        services.queue_redis,
        job,
        queue_name=settings.queue_name,
        timeout_s=settings.job_timeout_s,
        max_attempts=settings.training_policy.max_attempts,
    )


@router.get("")
async def list_jobs(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    jobs = await asyncio.to_thread(services.jobs.list, limit=limit + 1, after=after)
    return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}


@router.get("/{job_id}")
async def retrieve_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    return await _job_or_404(job_id, services)


@router.get("/{job_id}/events")
async def list_job_events(
    job_id: str,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    await _job_or_404(job_id, services)
    events = await asyncio.to_thread(services.jobs.events, job_id, limit=limit + 1, after=after)
    return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    """Cancels an open job (validating_files, queued or running); a running job stops after its current step."""
    job = await _job_or_404(job_id, services)
    try:
        cancelled = await asyncio.to_thread(services.jobs.cancel, services.queue_redis, job["id"])
    except JobFinishedError as error:
        raise APIError(
            400,
            f"training job {job_id} already {error.status}; only validating_files, queued or running jobs "
            "can be cancelled",
            param="job_id",
            code="job_not_cancellable",
        ) from error
    logger.info("Job %s: cancelled by request (partner %s)", job_id, cancelled["partner_id"])
    return cancelled
