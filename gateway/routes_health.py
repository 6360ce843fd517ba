"""Liveness and readiness probes."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis.exceptions
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from gateway.services import Services, get_services

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    checks: dict[str, Any] = {"model_loaded": services.engine is None or services.engine.ready}
    try:
        checks["redis"] = bool(await services.redis.ping())
    except (redis.exceptions.RedisError, OSError) as error:
        logger.warning("Readiness: Redis at %s unreachable: %s", services.settings.redis_url_redacted, error)
        checks["redis"] = False

    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
