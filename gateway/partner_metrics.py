"""A partner's efficiency metrics over its most recent sessions, with each session's result cached in Redis.

A cached entry stores the number of turns it was computed from. It stays valid while the session's
``turn_count`` is unchanged, so repeated requests re-read only sessions that gained turns since.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from adapters.registry import CONVENTION_OWNER
from gateway.errors import APIError
from gateway.partner_tokens import PartnerTokenCounter, engine_counter
from gateway.partners import Partner
from gateway.routing import resolve_route
from gateway.services import Services
from gateway.session_metrics import NO_ADAPTER, SessionSums, efficiency_fields, session_object, summarize_session

logger = logging.getLogger(__name__)

# Bumped when SessionSums changes, so that entries written by older code are recomputed.
CACHE_FORMAT = 1
# Entries of sessions that are no longer requested expire, and a later request recomputes them.
CACHE_TTL_S = 30 * 24 * 3600


def _cached_sums(raw: str | None, turn_count: int, unit_now: str) -> SessionSums | None:
    """Returns the cached sums when they were computed from ``turn_count`` turns with today's counting unit."""
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        if entry.get("format") != CACHE_FORMAT or entry.get("turn_count") != turn_count:
            return None
        sums = SessionSums.from_json(entry["sums"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("Session metrics cache: unreadable entry, recomputing: %s", error)
        return None
    # Turns stored without partner_tokens were counted at read time, so a change of unit recomputes them.
    if sums.backfill_unit not in (None, unit_now):
        return None
    return sums


def _summarize_all(turn_lists: list[list[dict[str, Any]]], counter: PartnerTokenCounter) -> list[SessionSums]:
    return [summarize_session(turns, counter) for turns in turn_lists]


async def _session_sums(
    services: Services, partner_id: str, session_ids: list[str], metas: list[dict[str, str]]
) -> list[SessionSums]:
    """Returns each session's sums from the cache, computing and caching those whose turn count changed."""
    keys = services.keys
    counter = engine_counter(services.engine)
    unit_now = counter([])[1]
    cached = await services.redis.mget([keys.session_metrics(partner_id, sid) for sid in session_ids])
    found = [
        _cached_sums(raw, int(meta.get("turn_count", 0)), unit_now) for raw, meta in zip(cached, metas, strict=True)
    ]
    stale = [index for index, sums in enumerate(found) if sums is None]
    if not stale:
        return [sums for sums in found if sums is not None]

    async with services.redis.pipeline(transaction=False) as pipe:
        for index in stale:
            pipe.lrange(keys.session_turns(partner_id, session_ids[index]), 0, -1)
        raw_lists = await pipe.execute()
    turn_lists = [[json.loads(raw) for raw in raw_turns] for raw_turns in raw_lists]
    # Mining and tokenizing are CPU work, so they run off the event loop.
    computed = await asyncio.to_thread(_summarize_all, turn_lists, counter)

    async with services.redis.pipeline(transaction=False) as pipe:
        for index, sums, turns in zip(stale, computed, turn_lists, strict=True):
            found[index] = sums
            entry = {"format": CACHE_FORMAT, "turn_count": len(turns), "sums": sums.to_json()}
            pipe.set(keys.session_metrics(partner_id, session_ids[index]), json.dumps(entry), ex=CACHE_TTL_S)
        await pipe.execute()
    logger.debug("Partner %s: metrics computed for %d of %d sessions", partner_id, len(stale), len(session_ids))
    return [sums for sums in found if sums is not None]


async def _adapter_in_use(services: Services, partner_id: str) -> dict[str, Any]:
    """Returns what a request for the local model would be served with now, and the partner's active version."""
    active = await services.redis.get(services.keys.active_adapter(partner_id))
    in_use = NO_ADAPTER
    local = services.settings.local_model
    if local is not None:
        partner = Partner(id=partner_id, anonymous=partner_id == services.settings.anonymous_partner_id, source="")
        route = await resolve_route(local.model_name, partner, services)
        in_use = route.adapter.name if route.adapter is not None else NO_ADAPTER
    return {"in_use": in_use, "active_version": int(active) if active is not None else None}


async def partner_metrics(services: Services, partner_id: str, *, session_limit: int) -> dict[str, Any]:
    """Builds the ``partner.metrics`` object over the partner's ``session_limit`` most recently updated sessions.

    Sessions are listed oldest first by creation time. The totals cover the same sessions, so a partner with many
    sessions costs at most ``session_limit`` cache reads, and ``session_count`` counts all of them. Raises a 404
    APIError when the partner has no sessions.
    """
    session_ids = await services.redis.zrevrange(services.keys.sessions(partner_id), 0, session_limit - 1)
    session_count = await services.redis.zcard(services.keys.sessions(partner_id))
    if not session_ids:
        raise APIError(
            404,
            f"partner {partner_id!r} has no sessions; send chat completions with X-Partner-ID: {partner_id} first",
            param="partner_id",
            code="partner_not_found",
        )

    async with services.redis.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.hgetall(services.keys.session(partner_id, session_id))
        metas = await pipe.execute()
    all_sums = await _session_sums(services, partner_id, session_ids, metas)

    sessions = [
        session_object(meta, session_id, sums)
        for session_id, meta, sums in zip(session_ids, metas, all_sums, strict=True)
    ]
    sessions.sort(key=lambda session: (session["created_at"], session["session_id"]))
    totals = SessionSums()
    for sums in all_sums:
        totals.add(sums)
    return {
        "object": "partner.metrics",
        "partner_id": partner_id,
        "session_count": int(session_count),
        "adapter": await _adapter_in_use(services, partner_id),
        "totals": {"sessions": len(sessions), "turns": totals.turns, **efficiency_fields(totals)},
        "sessions": sessions,
    }


async def list_partners(services: Services, *, limit: int, after: str | None) -> dict[str, Any]:
    """Lists partners sorted by id, each with its session count and last session update, starting after ``after``.

    The convention adapter's owner is no partner, so it is left out.
    """
    members = await services.redis.smembers(services.keys.partners())
    ids = sorted(member for member in members if member != CONVENTION_OWNER and (after is None or member > after))
    page = ids[:limit]

    async with services.redis.pipeline(transaction=False) as pipe:
        for partner_id in page:
            pipe.zcard(services.keys.sessions(partner_id))
            pipe.zrevrange(services.keys.sessions(partner_id), 0, 0, withscores=True)
        replies = await pipe.execute()
    data = []
    for index, partner_id in enumerate(page):
        count, latest = replies[2 * index], replies[2 * index + 1]
        data.append(
            {
                "id": partner_id,
                "object": "partner",
                "session_count": int(count),
                "updated_at": float(latest[0][1]) if latest else None,
            }
        )
    return {"object": "list", "data": data, "has_more": len(ids) > limit}
