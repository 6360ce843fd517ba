"""Read-only access to a partner's stored sessions, for training."""

from __future__ import annotations

import json
from typing import Any

import redis

from adapters.keys import Keys


def load_partner_sessions(client: redis.Redis, keys: Keys, partner_id: str) -> list[list[dict[str, Any]]]:
    """Returns each session's trainable turns, oldest session first; sessions without such turns are left out."""
    session_ids = client.zrange(keys.sessions(partner_id), 0, -1)
    sessions = []
    for raw_id in session_ids:
        session_id = raw_id if isinstance(raw_id, str) else raw_id.decode()
        turns = [json.loads(raw) for raw in client.lrange(keys.session_turns(partner_id, session_id), 0, -1)]
        trainable = [turn for turn in turns if turn.get("trainable", True)]
        if trainable:
            sessions.append(trainable)
    return sessions
