"""Settings of a reference game run and the ``[LABEL=]MODEL[@none]`` speaker syntax of the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients.options import check_base_url, check_partner_id
from clients.refgame.contexts import DEFAULT_CONTEXTS_PATH
from clients.refgame.gateway_client import DEFAULT_BASE_URL
from clients.refgame.listeners import EMBEDDING_LISTENER
from clients.refgame.logit_bias import DEFAULT_BIAS_CAP
from clients.refgame.speaker import MAX_WORDS
from clients.served_model import ServedModel, parse_served_model

# A speaker is a served model; the names stay for callers of this module.
SpeakerSpec = ServedModel


def parse_speaker(value: str) -> ServedModel:
    """Parses ``[LABEL=]MODEL[@none]``; ``@none`` requests the bare model (X-Adapter: none)."""
    return parse_served_model(value, kind="speaker")


@dataclass
class RefGameConfig:
    """Everything a run needs; ``output_dir`` None plays the games without writing files."""

    speakers: list[SpeakerSpec]
    listener: str = EMBEDDING_LISTENER
    contexts_path: Path = DEFAULT_CONTEXTS_PATH
    games: int = 1
    repetitions: int = 6
    output_dir: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    partner_id: str = "refgame"
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 40
    max_retries: int = 2
    bias_cap: int = DEFAULT_BIAS_CAP
    max_words: int = MAX_WORDS

    def __post_init__(self) -> None:
        if not self.speakers:
            raise ValueError("at least one speaker is needed")
        labels = [speaker.label for speaker in self.speakers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"speaker labels must be unique, got {labels}; name them with LABEL=MODEL")
        for name in ("games", "repetitions", "max_tokens", "max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.bias_cap < 0:
            raise ValueError("max_retries and bias_cap must not be negative")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be between 0 and 2, got {self.temperature}")
        check_partner_id(self.partner_id, with_listener=self.listener != EMBEDDING_LISTENER)
        check_base_url(self.base_url)

    def to_dict(self) -> dict[str, object]:
        return {
            "speakers": [vars(speaker) for speaker in self.speakers],
            "listener": self.listener,
            "contexts_path": str(self.contexts_path),
            "games": self.games,
            "repetitions": self.repetitions,
            "base_url": self.base_url,
            "partner_id": self.partner_id,
            "seed": self.seed,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_retries": self.max_retries,
            "bias_cap": self.bias_cap,
            "max_words": self.max_words,
        }
