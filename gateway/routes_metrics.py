"""Measurement routes: the partner list, a partner's efficiency metrics, and the Prometheus ``/metrics`` page."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.settings import Settings
from gateway.partner_metrics import list_partners, partner_metrics
from gateway.partners import validate_id
from gateway.prometheus import GatewayMetrics
from gateway.prometheus_middleware import RequestMetricsMiddleware
from gateway.prometheus_scrape import ScrapeGauges
from gateway.services import Services, get_services

logger = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])
ServicesDep = Annotated[Services, Depends(get_services)]


def install(app: FastAPI, settings: Settings) -> GatewayMetrics:
    """Adds the request-counting middleware and these routes to ``app``, with a metrics registry of its own."""
    metrics = GatewayMetrics(settings)
    app.state.prometheus = metrics
    app.state.prometheus_scrape = ScrapeGauges(metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.include_router(router)
    return metrics


@router.get("/v1/partners")
async def get_partners(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """Lists partners sorted by id; pass the last id of a page as ``after`` to get the next page."""
    if after is not None:
        validate_id(after, param="after", kind="partner id")
    return await list_partners(services, limit=limit, after=after)


@router.get("/v1/partners/{partner_id}/metrics")
async def get_partner_metrics(
    partner_id: str,
    services: ServicesDep,
    sessions: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Returns the partner's tokens per turn, re-mentions and planning tokens over its most recent sessions."""
    validate_id(partner_id, param="partner_id", kind="partner id")
    return await partner_metrics(services, partner_id, session_limit=sessions)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, services: ServicesDep) -> Response:
    """Returns the Prometheus text format; gauges read from Redis are left out while Redis is unavailable."""
    scrape: ScrapeGauges = request.app.state.prometheus_scrape
    try:
        await scrape.refresh(services.redis, services.keys, services.engine)
    except redis.RedisError as error:
        logger.warning("Metrics: Redis gauges left out of this scrape: %s", error)
        scrape.clear_redis_gauges()
    metrics: GatewayMetrics = request.app.state.prometheus
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
