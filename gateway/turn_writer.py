"""Writing turns to Redis after the response is sent, with retries, so that Redis stays off the critical path.

A turn whose write fails is kept in a bounded buffer and written again every few seconds; the buffer is
flushed once more at shutdown. Turns are lost only when the buffer overflows or Redis is still down at
shutdown, and each loss is logged with the turn's ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import redis.exceptions

from gateway.sessions import SessionStore, conversation_after, conversation_digest, history_prefix

logger = logging.getLogger(__name__)

RETRY_INTERVAL_S = 5.0
MAX_BUFFERED_TURNS = 10_000


class TurnWriter:
    """Schedules turn writes off the request path and retries the ones that fail."""

    def __init__(self, sessions: SessionStore, *, max_buffered: int = MAX_BUFFERED_TURNS) -> None:
        self.sessions = sessions
        self.buffered: deque[dict[str, Any]] = deque()
        self.max_buffered = max_buffered
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_task: asyncio.Task[None] | None = None
        # Conversations of turns not yet in Redis, so that a follow-up request arriving before the write
        # still continues the same session.
        self._pending_sessions: dict[tuple[str, str], str] = {}

    def submit(self, turn: dict[str, Any]) -> None:
        """Writes ``turn`` in the background; a failed write is buffered and retried."""
        self._pending_sessions[self._conversation_key(turn)] = turn["session_id"]
        task = asyncio.get_running_loop().create_task(self._write(turn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._retry_task = asyncio.get_running_loop().create_task(self._retry_forever())

    async def close(self) -> None:
        """Waits for writes in flight, then tries the buffered turns once more."""
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        for turn in self.buffered:
            logger.error("Turn %s (partner %s) lost: Redis unavailable at shutdown", turn["id"], turn["partner_id"])

    def pending_session(self, partner_id: str, messages: list[dict[str, str]]) -> str | None:
        """Returns the session that ``messages`` continue when that session's last turn is not written yet."""
        prefix = history_prefix(messages)
        if not prefix:
            return None
        return self._pending_sessions.get((partner_id, conversation_digest(prefix)))

    @staticmethod
    def _conversation_key(turn: dict[str, Any]) -> tuple[str, str]:
        return turn["partner_id"], conversation_digest(conversation_after(turn))

    async def flush(self) -> None:
        """Writes buffered turns in order until one fails."""
        while self.buffered:
            turn = self.buffered[0]
            try:
                await self.sessions.append_turn(turn)
            except (redis.exceptions.RedisError, OSError) as error:
                logger.warning("Turn writer: %d turns still waiting for Redis: %s", len(self.buffered), error)
                return
            self.buffered.popleft()
            self._pending_sessions.pop(self._conversation_key(turn), None)

    async def _write(self, turn: dict[str, Any]) -> None:
        try:
            await self.sessions.append_turn(turn)
        except (redis.exceptions.RedisError, OSError) as error:
            logger.error("Turn %s (partner %s): write failed, will retry: %s", turn["id"], turn["partner_id"], error)
            self._buffer(turn)
            return
        self._pending_sessions.pop(self._conversation_key(turn), None)

    def _buffer(self, turn: dict[str, Any]) -> None:
        if len(self.buffered) >= self.max_buffered:
            dropped = self.buffered.popleft()
            self._pending_sessions.pop(self._conversation_key(dropped), None)
            logger.error("Turn %s (partner %s) lost: retry buffer full", dropped["id"], dropped["partner_id"])
        self.buffered.append(turn)

    async def _retry_forever(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)
            await self.flush()
