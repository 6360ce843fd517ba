"""The long-lived objects one gateway process shares between requests."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import aiohttp
import httpx
import redis
import redis.asyncio as aioredis
from fastapi import Request

from adapters.engine import LocalEngine
from adapters.keys import Keys
from adapters.registry import AdapterRegistry
from adapters.settings import Settings
from gateway.partner_tokens import add_partner_tokens, engine_counter
from gateway.sessions import SessionStore
from gateway.turn_writer import TurnWriter
from trainer.jobs import JobStore
from trainer.scheduling import consider_automatic_job

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 5.0
UPSTREAM_MAX_CONNECTIONS = 256
UPSTREAM_DEFAULT_TIMEOUT_S = 600.0
UPSTREAM_CONNECT_TIMEOUT_S = 10.0


@dataclass
class Services:
    """Redis clients, stores and the engine, built once at start-up."""

    settings: Settings
    keys: Keys
    redis: aioredis.Redis
    redis_sync: redis.Redis
    queue_redis: redis.Redis
    sessions: SessionStore
    registry: AdapterRegistry
    jobs: JobStore
    engine: LocalEngine | None
    upstream_http: httpx.AsyncClient
    upstream_session: aiohttp.ClientSession
    turn_writer: TurnWriter

    @classmethod
    def build(cls, settings: Settings, engine: LocalEngine | None) -> Services:
        keys = Keys(settings.key_prefix)
        timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
        async_client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, **timeouts)
        sync_client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **timeouts)
        # RQ stores pickled job data, so its connection must return bytes.
        queue_client = redis.Redis.from_url(settings.redis_url, **timeouts)
        sessions = SessionStore(async_client, keys, conversation_ttl_s=settings.conversation_index_ttl_s)
        services = cls(
            settings=settings,
            keys=keys,
            redis=async_client,
            redis_sync=sync_client,
            queue_redis=queue_client,
            sessions=sessions,
            turn_writer=TurnWriter(sessions),
            # Created inside the running event loop, since build() is called from the app's lifespan.
            upstream_session=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=UPSTREAM_MAX_CONNECTIONS), auto_decompress=True
            ),
            registry=AdapterRegistry(sync_client, keys),
            jobs=JobStore(sync_client, keys),
            engine=engine,
            upstream_http=httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=UPSTREAM_MAX_CONNECTIONS, max_keepalive_connections=UPSTREAM_MAX_CONNECTIONS
                ),
                timeout=httpx.Timeout(UPSTREAM_DEFAULT_TIMEOUT_S, connect=UPSTREAM_CONNECT_TIMEOUT_S),
            ),
        )
        sessions.on_trainable_turn = services.schedule_after_turn
        sessions.prepare_turn = functools.partial(add_partner_tokens, counter=engine_counter(engine))
        return services

    async def schedule_after_turn(self, partner_id: str, new_turns: int) -> None:
        """Starts the partner's training job when the training policy allows it; errors are logged, not raised."""
        policy = self.settings.training_policy
        if not policy.auto_training or new_turns < policy.min_new_turns:
            return
        try:
            job = await asyncio.to_thread(
                consider_automatic_job,
                settings=self.settings,
                jobs=self.jobs,
                queue_client=self.queue_redis,
                partner_id=partner_id,
                new_turns=new_turns,
            )
        except (redis.RedisError, ValueError) as error:
            logger.error("Partner %s: starting an automatic training job failed: %s", partner_id, error)
            return
        if job is not None:
            logger.info("Partner %s: automatic training job %s after %d new turns", partner_id, job["id"], new_turns)

    def local_engine(self) -> LocalEngine:
        if self.engine is None:
            raise RuntimeError("no local/ model is configured, so there is no local engine")
        return self.engine

    async def close(self) -> None:
        await self.turn_writer.close()
        await self.redis.aclose()
        self.redis_sync.close()
        self.queue_redis.close()
        await self.upstream_http.aclose()
        await self.upstream_session.close()
        if self.engine is not None:
            self.engine.shutdown()


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
