"""Settings of a probe run and the ``[LABEL=]MODEL[@none]`` model syntax of the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.probe.data import DEFAULT_DIALOGUES_PATH

BARE_SUFFIX = "@none"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_PARTNER_ID = "remention-probe"
# Enough tokens for a mention of up to about ten words, because the scorer reads only the first words.
DEFAULT_MAX_TOKENS = 24


@dataclass(frozen=True)
class ModelSpec:
    """A model to probe: the served model id, its label in outputs, and whether to force the bare model."""

    label: str
    model: str
    bare: bool = False


def parse_model(value: str) -> ModelSpec:
    """Parses ``[LABEL=]MODEL[@none]``; ``@none`` requests the bare model (``X-Adapter: none``)."""
    label, separator, model = value.partition("=")
    if not separator:
        label, model = "", value
    model = model.strip()
    bare = model.endswith(BARE_SUFFIX)
    if bare:
        model = model.removesuffix(BARE_SUFFIX)
    if not model:
        raise ValueError(f"invalid model {value!r}: expected [LABEL=]MODEL[@none], for example base=smollm2@none")
    return ModelSpec(label=label.strip() or value.strip(), model=model, bare=bare)


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
        if not self.partner_id.strip():
            raise ValueError("partner_id must not be empty")

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
