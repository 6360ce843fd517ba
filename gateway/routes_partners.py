"""Management routes of a partner: sessions and adapters."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query

from adapters.registry import AdapterVersion
from gateway.errors import APIError
from gateway.partners import validate_id
from gateway.services import Services, get_services
from trainer.jobs import OPEN_STATUSES, JobConflictError, enqueue_training, new_job, new_job_id, reconcile_with_queue

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/partners", tags=["partners"])
ServicesDep = Annotated[Services, Depends(get_services)]


def _check_partner_id(partner_id: str) -> None:
    validate_id(partner_id, param="partner_id", kind="partner id")


@router.get("/{partner_id}/sessions")
async def list_sessions(
    partner_id: str,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_turns: bool = True,
) -> dict[str, Any]:
    _check_partner_id(partner_id)
    sessions = await services.sessions.list_sessions(partner_id, limit=limit, include_turns=include_turns)
    total = await services.sessions.count_sessions(partner_id)
    return {"object": "list", "data": sessions, "has_more": total > len(sessions)}


def _adapter_object(adapter: AdapterVersion, active_version: int | None) -> dict[str, Any]:
    return {
        "id": adapter.name,
        "object": "adapter",
        **asdict(adapter),
        "status": "active" if adapter.version == active_version else "inactive",
    }


@router.get("/{partner_id}/adapters")
async def list_adapters(partner_id: str, services: ServicesDep) -> dict[str, Any]:
    _check_partner_id(partner_id)
    adapters = await asyncio.to_thread(services.registry.list, partner_id)
    active = await asyncio.to_thread(services.registry.active_version, partner_id)
    return {
        "object": "list",
        "data": [_adapter_object(adapter, active) for adapter in adapters],
        "active_version": active,
    }


@router.post("/{partner_id}/adapters", status_code=200)
async def start_training(partner_id: str, services: ServicesDep) -> dict[str, Any]:
    """Enqueues a training job that builds the partner's next adapter version from its sessions."""
    _check_partner_id(partner_id)
    if partner_id == services.settings.anonymous_partner_id:
        raise APIError(400, "turns of anonymous requests are never used for training", param="partner_id")
    if services.settings.local_model is None:
        raise APIError(
            400, "no local/ model is configured in model_list, so there is no base model to train", param="model"
        )
    if await services.sessions.count_sessions(partner_id) == 0:
        raise APIError(
            400,
            f"partner {partner_id!r} has no sessions yet; chat with X-Partner-ID: {partner_id} first",
            param="partner_id",
            code="no_sessions",
        )

    return await asyncio.to_thread(_create_and_enqueue, partner_id, services)


def _create_and_enqueue(partner_id: str, services: Services) -> dict[str, Any]:
    settings = services.settings
    hyperparameters = {
        "n_epochs": settings.training.epochs,
        "batch_size": settings.training.batch_size,
        "learning_rate": settings.training.learning_rate,
        "beta": settings.training.beta,
        "lora_rank": settings.training.lora_rank,
        "seed": settings.training.seed,
    }
    job = new_job(
        job_id=new_job_id(),
        partner_id=partner_id,
        model=settings.require_local_model().model_name,
        hyperparameters=hyperparameters,
    )
    try:
        services.jobs.create(job)
    except JobConflictError as error:
        if not _open_job_ended(error.open_job_id, services):
            raise APIError(409, str(error), param="partner_id", code="job_already_open") from error
        services.jobs.create(job)

    try:
        enqueue_training(
            services.queue_redis, queue_name=settings.queue_name, job_id=job["id"], timeout_s=settings.job_timeout_s
        )
    except redis.RedisError as error:
        logger.error("Job %s: enqueueing failed for partner %s: %s", job["id"], partner_id, error)
        failure = {"code": "enqueue_failed", "message": f"enqueueing the job failed: {error}", "param": None}
        services.jobs.set_status(job["id"], "failed", error=failure)
        raise

    logger.info("Job %s: created for partner %s", job["id"], partner_id)
    return job


def _open_job_ended(job_id: str, services: Services) -> bool:
    """Returns True when the job blocking a new one turns out to have ended in the queue (a killed worker)."""
    job = services.jobs.get(job_id)
    if job is None:
        return True
    return reconcile_with_queue(services.jobs, services.queue_redis, job)["status"] not in OPEN_STATUSES
