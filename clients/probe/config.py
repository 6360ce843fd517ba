"""Settings of a probe run and the ``[LABEL=]MODEL[@none]`` model syntax of the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.options import check_base_url, check_partner_id
from clients.probe.data import DEFAULT_DIALOGUES_PATH
from clients.served_model import ServedModel, parse_served_model

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_PARTNER_ID = "remention-probe"
# Enough tokens for a mention of up to about ten words, because the scorer reads only the first words.
DEFAULT_MAX_TOKENS = 24


# The names stay for callers of this module.
ModelSpec = ServedModel


def parse_model(value: str) -> ServedModel:
    """Parses ``[LABEL=]MODEL[@none]``; ``@none`` requests the bare model (``X-Adapter: none``)."""
    return parse_served_model(value, kind="model")


@dataclass
class ProbeConfig:
    """Everything a probe run needs; ``output_dir`` None runs the probe without writing files."""

    models: list[ModelSpec]
    dialogues_path: Path = DEFAULT_DIALOGUES_PATH
    partner_id: str = DEFAULT_PARTNER_ID
    base_url: str = DEFAULT_BASE_URL
    output_dir: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout_s: float = 300.0
    # The number of items to probe from the start of the file. None probes all of them.
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model is needed")
        labels = [spec.label for spec in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must be unique, got {labels}; name them with LABEL=MODEL")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        check_partner_id(self.partner_id)
        check_base_url(self.base_url)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [vars(spec) for spec in self.models],
            "dialogues_path": str(self.dialogues_path),
            "partner_id": self.partner_id,
            "base_url": self.base_url,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "limit": self.limit,
        }
