"""Cheap checks of a new training job's data, run before the job is queued; no model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from adapters.keys import Keys
from adapters.settings import Settings


class InvalidTrainingDataError(ValueError):
    """The job has nothing to train on: no local base model, or no stored session with turns."""

    code = "invalid_training_data"

    def error_object(self) -> dict[str, Any]:
        """Returns the job's ``error`` field in OpenAI's shape."""
        return {"code": self.code, "message": str(self), "param": None}


@dataclass(frozen=True)
class TrainingDataSummary:
    """Counts found by validation: the partner's sessions that contain turns, and their turns."""

    sessions: int
    turns: int

    def describe(self) -> str:
        return f"{_count(self.sessions, 'session')} with {_count(self.turns, 'turn')}"


def validate_training_data(
    client: redis.Redis, keys: Keys, *, settings: Settings, partner_id: str
) -> TrainingDataSummary:
    """Checks that a local base model is configured and the partner has a stored session with turns.

    Turns are counted by list length and not parsed. Every turn of a partner other than the anonymous one is
    trainable, so the count is that of trainable turns. Raises InvalidTrainingDataError with the fix.
    """
    if settings.local_model is None:
        raise InvalidTrainingDataError(
            "model_list has no local/ entry, so there is no base model to train an adapter on; add one such as "
            "'local/smollm2-135m-instruct' and start the job again"
        )

    session_ids = client.zrange(keys.sessions(partner_id), 0, -1)
    pipe = client.pipeline(transaction=False)
    for raw_id in session_ids:
        session_id = raw_id if isinstance(raw_id, str) else raw_id.decode()
        pipe.llen(keys.session_turns(partner_id, session_id))
    turn_counts = [int(count) for count in pipe.execute()] if session_ids else []

    summary = TrainingDataSummary(sessions=sum(1 for count in turn_counts if count > 0), turns=sum(turn_counts))
    if summary.sessions == 0:
        raise InvalidTrainingDataError(
            f"partner {partner_id!r} has no stored session with turns ({_count(len(session_ids), 'session')} "
            f"without turns); send chat completions with X-Partner-ID: {partner_id}, then start the job again"
        )
    return summary


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
