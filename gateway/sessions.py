"""Session history in Redis: every served turn, grouped into sessions per partner.

A client may name the session with ``X-Session-ID``. Otherwise the session is found from the conversation
itself: after each turn the store maps a digest of (request messages + response) to the session, and a later
request whose messages up to its last assistant message have that digest continues the same session.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from adapters.keys import Keys

# How long a stored turn's id is remembered, to drop duplicate writes from retries.
WRITTEN_MARKER_TTL_S = 24 * 3600

_APPEND_TURN_SCRIPT = """
if not redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[8]) then
  return -1
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[2])
redis.call('HSET', KEYS[2], 'updated_at', ARGV[3], 'model', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'turn_count', 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[7])
if ARGV[9] == '1' then
  return redis.call('HINCRBY', KEYS[7], 'new_turns', 1)
end
return 0
"""


def conversation_digest(messages: list[dict[str, str]]) -> str:
    canonical = json.dumps([[message["role"], message["content"]] for message in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def history_prefix(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Returns the messages up to and including the last assistant message (empty for a first turn)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return messages[: index + 1]
    return []


def conversation_after(turn: dict[str, Any]) -> list[dict[str, str]]:
    """Returns the conversation after a stored turn, as a client resends it with its next request.

    A turn that continued the final assistant message (``continue_final_message``) stores the partial message
    among its request messages and only the continuation as its response, so the two are joined here.
    """
    messages, response = turn["messages"], turn["response"]
    if not turn.get("continue_final_message"):
        return [*messages, response]
    partial = messages[-1]
    return [*messages[:-1], {"role": partial["role"], "content": partial["content"] + response["content"]}]


def new_session_id() -> str:
    return f"sess-{secrets.token_hex(12)}"


class SessionStore:
    """Appends turns and reads sessions with the asyncio Redis client."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, conversation_ttl_s: int) -> None:
        self.client = client
        self.keys = keys
        self.conversation_ttl_s = conversation_ttl_s
        self._append_script = client.register_script(_APPEND_TURN_SCRIPT)
        # Called after each stored trainable turn with the partner's count of turns since its last training job.
        self.on_trainable_turn: Callable[[str, int], Awaitable[None]] | None = None
        # Called before a turn is serialized, to add derived fields such as the partner's token count.
        self.prepare_turn: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        # Called after a turn is stored for the first time; a retried duplicate write does not call it.
        self.on_turn_stored: Callable[[dict[str, Any]], None] | None = None

    async def find_session(self, partner_id: str, messages: list[dict[str, str]]) -> str | None:
        """Returns the session that ``messages`` continue, or None when they start a new conversation."""
        prefix = history_prefix(messages)
        if not prefix:
            return None
        found = await self.client.get(self.keys.conversation(partner_id, conversation_digest(prefix)))
        return found if found is None or isinstance(found, str) else found.decode()

    async def append_turn(self, turn: dict[str, Any]) -> bool:
        """Stores a served turn, updates its session and remembers the conversation for the next turn.

        One script call does it all atomically, and counts trainable turns for the training policy. Returns False
        when the turn was already stored, which happens when a write whose reply was lost is retried.
        """
        partner_id, session_id = turn["partner_id"], turn["session_id"]
        if self.prepare_turn is not None:
            await self.prepare_turn(turn)
        continued = conversation_after(turn)
        keys = [
            self.keys.session_turns(partner_id, session_id),
            self.keys.session(partner_id, session_id),
            self.keys.sessions(partner_id),
            self.keys.partners(),
            self.keys.conversation(partner_id, conversation_digest(continued)),
            self.keys.turn_written(turn["id"]),
            self.keys.partner_stats(partner_id),
        ]
        arguments = [
            json.dumps(turn, ensure_ascii=False),
            turn["created_at"],
            turn["completed_at"],
            turn["model"],
            session_id,
            partner_id,
            self.conversation_ttl_s,
            WRITTEN_MARKER_TTL_S,
            "1" if turn.get("trainable", True) else "0",
        ]
        new_turns = int(await self._append_script(keys=keys, args=arguments))
        if new_turns < 0:
            return False
        if self.on_turn_stored is not None:
            self.on_turn_stored(turn)
        if new_turns > 0 and self.on_trainable_turn is not None:
            await self.on_trainable_turn(partner_id, new_turns)
        return True

    async def list_sessions(self, partner_id: str, *, limit: int, include_turns: bool = True) -> list[dict[str, Any]]:
        """Returns the partner's most recently updated sessions first."""
        session_ids = await self.client.zrevrange(self.keys.sessions(partner_id), 0, limit - 1)
        return [await self.get_session(partner_id, sid, include_turns=include_turns) for sid in session_ids]

    async def count_sessions(self, partner_id: str) -> int:
        return int(await self.client.zcard(self.keys.sessions(partner_id)))

    async def get_session(self, partner_id: str, session_id: str, *, include_turns: bool = True) -> dict[str, Any]:
        meta = await self.client.hgetall(self.keys.session(partner_id, session_id))
        session: dict[str, Any] = {
            "id": session_id,
            "object": "partner.session",
            "partner_id": partner_id,
            "created_at": float(meta.get("created_at", 0)),
            "updated_at": float(meta.get("updated_at", 0)),
            "turn_count": int(meta.get("turn_count", 0)),
        }
        if include_turns:
            raw_turns = await self.client.lrange(self.keys.session_turns(partner_id, session_id), 0, -1)
            session["turns"] = [json.loads(raw) for raw in raw_turns]
        return session


def build_turn(
    *,
    request_id: str,
    partner_id: str,
    session_id: str,
    trainable: bool,
    model: str,
    adapter: str | None,
    messages: list[dict[str, str]],
    response_text: str,
    finish_reason: str,
    usage: dict[str, int],
    created_at: float,
) -> dict[str, Any]:
    """Builds the stored record of one served turn."""
    return {
        "id": f"turn-{secrets.token_hex(8)}",
        "request_id": request_id,
        "partner_id": partner_id,
        "session_id": session_id,
        "trainable": trainable,
        "model": model,
        "adapter": adapter,
        "messages": messages,
        "response": {"role": "assistant", "content": response_text},
        "finish_reason": finish_reason,
        "usage": usage,
        "created_at": created_at,
        "completed_at": time.time(),
    }
