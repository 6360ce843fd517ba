"""The record of one trial, as stored in results.json and trials.csv."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    """One trial: the speaker's message for the target and the listener's pick.

    ``repetition`` counts from 1; ``tokens`` is None when the speaker's tokenizer is unavailable (upstream models).
    ``violations`` and ``too_long`` describe the message that was sent after all retries.
    """

    speaker: str
    model: str
    game: int
    context_id: str
    repetition: int
    trial: int
    target: str
    shown: list[str]
    message: str
    words: int
    tokens: int | None
    attempts: int
    violations: list[str] = field(default_factory=list)
    too_long: bool = False
    rejected: list[str] = field(default_factory=list)
    pick: str | None = None
    correct: bool = False
    listener_output: str = ""
    adapter: str | None = None
    session_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
