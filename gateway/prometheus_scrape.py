"""Gauges read from Redis and the engine when Prometheus scrapes: loaded and active adapters, training jobs.

Counting active adapters reads one key per partner, in pipelined batches. Counting training jobs reads the job
index and then only the jobs whose status can still change: a job in a terminal status never changes it again,
so its status is remembered after the first read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import redis.asyncio as aioredis

from adapters.engine import LocalEngine
from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER
from gateway.prometheus import JOB_STATUSES, GatewayMetrics
from trainer.jobs import TERMINAL_STATUSES

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


class ScrapeGauges:
    """Refreshes the scrape-time gauges of one GatewayMetrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        # Job id -> terminal status, for jobs whose status is final.
        self._finished_jobs: dict[str, str] = {}

    async def refresh(self, client: aioredis.Redis, keys: Keys, engine: LocalEngine | None) -> None:
        """Sets every scrape-time gauge; raises redis.RedisError when Redis is unavailable."""
        self.metrics.loaded_adapters.set(len(engine.loaded_adapters()) if engine is not None else 0)
        partners, convention = await _active_adapter_owners(client, keys)
        self.metrics.active_adapters.labels(owner_kind="partner").set(partners)
        self.metrics.active_adapters.labels(owner_kind="convention").set(convention)
        counts = await self._job_counts(client, keys)
        for status in JOB_STATUSES:
            self.metrics.training_jobs.labels(status=status).set(counts.get(status, 0))

    def clear_redis_gauges(self) -> None:
        """Drops the gauges read from Redis, so that a failed scrape shows them missing rather than stale."""
        self.metrics.active_adapters.clear()
        self.metrics.training_jobs.clear()

    async def _job_counts(self, client: aioredis.Redis, keys: Keys) -> Counter[str]:
        job_ids = await client.zrange(keys.jobs(), 0, -1)
        known = set(job_ids)
        self._finished_jobs = {job_id: status for job_id, status in self._finished_jobs.items() if job_id in known}
        counts = Counter(self._finished_jobs.values())

        unknown = [job_id for job_id in job_ids if job_id not in self._finished_jobs]
        for start in range(0, len(unknown), BATCH_SIZE):
            batch = unknown[start : start + BATCH_SIZE]
            raws = await client.mget([keys.job(job_id) for job_id in batch])
            for job_id, raw in zip(batch, raws, strict=True):
                status = _job_status(job_id, raw)
                if status is None:
                    continue
                counts[status] += 1
                if status in TERMINAL_STATUSES:
                    self._finished_jobs[job_id] = status
        return counts


def _job_status(job_id: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        status = json.loads(raw).get("status")
    except (ValueError, AttributeError):
        logger.warning("Metrics: training job %s has an unreadable record", job_id)
        return None
    return status if status in JOB_STATUSES else None


async def _active_adapter_owners(client: aioredis.Redis, keys: Keys) -> tuple[int, int]:
    """Returns (partners with an active adapter, 1 when the convention adapter is active else 0)."""
    convention = int(await client.exists(keys.active_adapter(CONVENTION_OWNER)))
    partners = 0
    batch: list[str] = []
    async for partner_id in client.sscan_iter(keys.partners(), count=BATCH_SIZE):
        if partner_id != CONVENTION_OWNER:
            batch.append(partner_id)
        if len(batch) >= BATCH_SIZE:
            partners += await _count_active(client, keys, batch)
            batch = []
    if batch:
        partners += await _count_active(client, keys, batch)
    return partners, convention


async def _count_active(client: aioredis.Redis, keys: Keys, partner_ids: list[str]) -> int:
    values = await client.mget([keys.active_adapter(partner_id) for partner_id in partner_ids])
    return sum(value is not None for value in values)
