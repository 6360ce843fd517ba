"""Turns written after the response: retried while Redis is down, written once it is back."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from adapters.keys import Keys
from gateway.sessions import SessionStore, build_turn
from gateway.turn_writer import TurnWriter
from tests.conftest import REDIS_URL, free_port


def a_turn(partner_id: str) -> dict:
    return build_turn(
        request_id="req-1",
        partner_id=partner_id,
        session_id="sess-1",
        trainable=True,
        model="m",
        adapter=None,
        messages=[{"role": "user", "content": "hi"}],
        response_text="hello",
        finish_reason="stop",
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        created_at=0.0,
    )


def store(url: str, key_prefix: str) -> SessionStore:
    client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=1)
    return SessionStore(client, Keys(key_prefix), conversation_ttl_s=60)


async def settle(writer: TurnWriter) -> None:
    for _ in range(100):
        if not writer._tasks:
            return
        await asyncio.sleep(0.01)


def test_submitted_turn_is_written(key_prefix: str) -> None:
    async def run() -> int:
        sessions = store(REDIS_URL, key_prefix)
        writer = TurnWriter(sessions)
        writer.submit(a_turn("alice"))
        await settle(writer)
        stored = await sessions.get_session("alice", "sess-1")
        await sessions.client.aclose()
        return stored["turn_count"]

    assert asyncio.run(run()) == 1


def test_failed_write_buffered_then_flushed(key_prefix: str) -> None:
    async def run() -> tuple[int, int, int]:
        writer = TurnWriter(store(f"redis://127.0.0.1:{free_port()}/0", key_prefix))
        writer.submit(a_turn("bob"))
        await settle(writer)
        buffered_while_down = len(writer.buffered)

        await writer.sessions.client.aclose()
        writer.sessions = store(REDIS_URL, key_prefix)
        await writer.flush()
        stored = await writer.sessions.get_session("bob", "sess-1")
        await writer.sessions.client.aclose()
        return buffered_while_down, len(writer.buffered), stored["turn_count"]

    buffered_while_down, buffered_after, turn_count = asyncio.run(run())
    assert buffered_while_down == 1
    assert buffered_after == 0
    assert turn_count == 1


def test_full_buffer_drops_oldest(key_prefix: str) -> None:
    writer = TurnWriter(store(REDIS_URL, key_prefix), max_buffered=2)
    for partner in ("a", "b", "c"):
        writer._buffer(a_turn(partner))

    assert [turn["partner_id"] for turn in writer.buffered] == ["b", "c"]


def test_pending_turn_continues_session(key_prefix: str) -> None:
    async def run() -> tuple[str | None, str | None]:
        writer = TurnWriter(store(f"redis://127.0.0.1:{free_port()}/0", key_prefix))
        writer.submit(a_turn("carol"))
        follow_up = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and then?"},
        ]
        before_write = writer.pending_session("carol", follow_up)
        await settle(writer)
        other_partner = writer.pending_session("dave", follow_up)
        await writer.sessions.client.aclose()
        return before_write, other_partner

    before_write, other_partner = asyncio.run(run())
    assert before_write == "sess-1"
    assert other_partner is None
