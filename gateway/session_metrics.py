"""Efficiency measures of one stored session: tokens per turn on both sides, re-mentions and their compression.

The measures are kept as sums (not means), so that sessions add up into a partner's totals without re-reading
their turns. Everything here is pure CPU work on turns already read from Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.partner_tokens import PartnerTokenCounter, partner_token_fields
from trainer.mining import find_rementions, session_transcript

NO_ADAPTER = "none"


@dataclass
class SessionSums:
    """Sums over one session's turns; a turn is a local model turn when it stores ``planning_tokens``."""

    turns: int = 0
    model_tokens: int = 0
    partner_tokens: int = 0
    rementions: int = 0
    compression_sum: float = 0.0
    planning_tokens: int = 0
    local_turns: int = 0
    adapters: list[str] = field(default_factory=list)
    # The unit of partner tokens counted at read time for turns stored without them; None when every turn had them.
    backfill_unit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionSums:
        return cls(**data)

    def add(self, other: SessionSums) -> None:
        """Adds another session's sums; adapters are not merged because totals do not list them."""
        self.turns += other.turns
        self.model_tokens += other.model_tokens
        self.partner_tokens += other.partner_tokens
        self.rementions += other.rementions
        self.compression_sum += other.compression_sum
        self.planning_tokens += other.planning_tokens
        self.local_turns += other.local_turns


def _word_count(text: str) -> int:
    return len(text.split())


def _completion_tokens(turn: Mapping[str, Any]) -> int:
    usage = turn.get("usage")
    value = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) else 0


def summarize_session(turns: Sequence[dict[str, Any]], counter: PartnerTokenCounter) -> SessionSums:
    """Computes a session's sums from its stored turns, oldest first.

    Turns stored before ``partner_tokens`` existed are counted now with ``counter``. Re-mentions are those that
    ``trainer.mining.find_rementions`` finds in the session's whole transcript, from both speakers.
    """
    sums = SessionSums(turns=len(turns))
    for turn in turns:
        sums.model_tokens += _completion_tokens(turn)
        partner = partner_token_fields(turn, counter)
        sums.partner_tokens += partner["partner_tokens"]
        if "partner_tokens" not in turn:
            sums.backfill_unit = partner["partner_tokens_unit"]
        planning = turn.get("planning_tokens")
        if isinstance(planning, int):
            sums.planning_tokens += planning
            sums.local_turns += 1
        adapter = turn.get("adapter") or NO_ADAPTER
        if adapter not in sums.adapters:
            sums.adapters.append(adapter)

    # A first mention has at least three words (find_rementions' min_first_words), so the ratio is defined.
    for remention in find_rementions(session_transcript(turns)):
        sums.rementions += 1
        sums.compression_sum += _word_count(remention.later.text) / _word_count(remention.first.text)
    return sums


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def efficiency_fields(sums: SessionSums) -> dict[str, Any]:
    """Returns the means that both a session and the totals report."""
    return {
        "model_tokens_per_turn": _mean(sums.model_tokens, sums.turns),
        "partner_tokens_per_turn": _mean(sums.partner_tokens, sums.turns),
        "rementions": sums.rementions,
        "remention_compression": _mean(sums.compression_sum, sums.rementions),
        "planning_token_rate": _mean(sums.planning_tokens, sums.local_turns),
    }


def session_object(meta: Mapping[str, Any], session_id: str, sums: SessionSums) -> dict[str, Any]:
    """Returns one entry of the metrics ``sessions`` list."""
    return {
        "session_id": session_id,
        "created_at": float(meta.get("created_at", 0)),
        "updated_at": float(meta.get("updated_at", 0)),
        "turns": sums.turns,
        **efficiency_fields(sums),
        "adapters": list(sums.adapters),
    }
