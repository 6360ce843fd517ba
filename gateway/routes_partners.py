"""Management routes of a partner: sessions and adapters."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict

from adapters.registry import AdapterVersion
from gateway.errors import APIError
from gateway.partners import validate_id
from gateway.services import Services, get_services
from trainer.jobs import JobConflictError
from trainer.scheduling import start_training_job

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


def adapter_object(adapter: AdapterVersion, active_version: int | None) -> dict[str, Any]:
    """Returns an adapter version as the API shows it, with ``status`` active or inactive."""
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
        "data": [adapter_object(adapter, active) for adapter in adapters],
        "active_version": active,
    }


@router.post("/{partner_id}/adapters", status_code=200)
async def start_training(partner_id: str, services: ServicesDep) -> dict[str, Any]:
    """Starts a training job that builds the partner's next adapter version from its sessions.

    Returns 200 with the job object: ``queued`` once its data passed validation, or ``failed`` with error code
    ``invalid_training_data`` (nothing enqueued) when no stored session of the partner contains turns. Returns
    400 for the anonymous partner, without a local model or without sessions, and 409 while another job is open.
    """
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

    try:
        return await asyncio.to_thread(
            start_training_job,
            settings=services.settings,
            jobs=services.jobs,
            queue_client=services.queue_redis,
            partner_id=partner_id,
            reason="requested",
        )
    except JobConflictError as error:
        raise APIError(409, str(error), param="partner_id", code="job_already_open") from error


class PartnerUpdate(BaseModel):
    """Fields of a partner that clients can change."""

    model_config = ConfigDict(extra="forbid")

    auto_training: bool | None = None


@router.get("/{partner_id}")
async def get_partner(partner_id: str, services: ServicesDep) -> dict[str, Any]:
    """Returns the partner's summary: sessions, training counters, settings and active adapter."""
    _check_partner_id(partner_id)
    stats = await services.redis.hgetall(services.keys.partner_stats(partner_id))
    own = await services.redis.hgetall(services.keys.partner_settings(partner_id))
    active = await services.redis.get(services.keys.active_adapter(partner_id))
    open_job = await services.redis.get(services.keys.partner_open_job(partner_id))
    return {
        "id": partner_id,
        "object": "partner",
        "session_count": await services.sessions.count_sessions(partner_id),
        "new_turns": int(stats.get("new_turns", 0)),
        "last_job_at": float(stats["last_job_at"]) if "last_job_at" in stats else None,
        "auto_training": own.get("auto_training") != "0",
        "active_adapter": f"{partner_id}/{active}" if active is not None else None,
        "open_job": open_job,
    }


@router.patch("/{partner_id}")
async def update_partner(partner_id: str, update: PartnerUpdate, services: ServicesDep) -> dict[str, Any]:
    """Changes the partner's settings; ``auto_training: false`` opts the partner out of automatic jobs."""
    _check_partner_id(partner_id)
    if update.auto_training is not None:
        await services.redis.hset(
            services.keys.partner_settings(partner_id), "auto_training", "1" if update.auto_training else "0"
        )
        logger.info("Partner %s: auto_training set to %s", partner_id, update.auto_training)
    return await get_partner(partner_id, services)
