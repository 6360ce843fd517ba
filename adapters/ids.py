"""The rule for partner and session ids, shared by the gateway and the evaluation clients without web imports."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ @ -, starting with a letter or digit"


def is_valid_id(value: str) -> bool:
    """Returns whether ``value`` is a valid partner or session id."""
    return ID_PATTERN.fullmatch(value) is not None
