"""A model to evaluate, as the evaluation commands name it: ``[LABEL=]MODEL[@none]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Appended to a model id to request the bare model through the ``X-Adapter: none`` header.
BARE_SUFFIX = "@none"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ServedModel:
    """A served model id, its label in outputs, and whether to force the bare model."""

    label: str
    model: str
    bare: bool = False

    @property
    def slug(self) -> str:
        """Returns the label with characters that session ids do not allow replaced by '-'."""
        return _LABEL_UNSAFE.sub("-", self.label).strip("-") or "model"


def parse_served_model(value: str, *, kind: str = "model") -> ServedModel:
    """Parses ``[LABEL=]MODEL[@none]``; ``kind`` names the option in the error message."""
    label, separator, model = value.partition("=")
    if not separator:
        label, model = "", value
    model = model.strip()
    bare = model.endswith(BARE_SUFFIX)
    if bare:
        model = model.removesuffix(BARE_SUFFIX)
    if not model:
        raise ValueError(f"invalid {kind} {value!r}: expected [LABEL=]MODEL[@none], for example base=smollm2@none")
    return ServedModel(label=label.strip() or value.strip(), model=model, bare=bare)
