"""Checks of option values that the evaluation commands share, run before the first request."""

from __future__ import annotations

from adapters.ids import ID_RULE, is_valid_id

# A model listener plays as its own partner, named after the speaker's partner with this suffix.
LISTENER_PARTNER_SUFFIX = "-listener"


def check_partner_id(partner_id: str, *, with_listener: bool = False) -> None:
    """Raises ValueError unless the gateway accepts ``partner_id`` (and ``<partner_id>-listener`` when asked)."""
    if not is_valid_id(partner_id):
        raise ValueError(f"invalid partner id {partner_id!r}: use {ID_RULE}")
    listener_id = partner_id + LISTENER_PARTNER_SUFFIX
    if with_listener and not is_valid_id(listener_id):
        raise ValueError(
            f"invalid partner id {partner_id!r}: the model listener plays as {listener_id!r}, which is longer than "
            f"128 characters; use a shorter partner id"
        )


def check_base_url(base_url: str) -> None:
    """Raises ValueError unless ``base_url`` is an http(s) URL ending in /v1, the gateway's OpenAI base URL."""
    stripped = base_url.rstrip("/")
    if not stripped.startswith(("http://", "https://")):
        raise ValueError(
            f"invalid base URL {base_url!r}: use http:// or https://, for example http://127.0.0.1:8000/v1"
        )
    if not stripped.endswith("/v1"):
        raise ValueError(
            f"invalid base URL {base_url!r}: use the gateway's OpenAI base URL, which ends in /v1, "
            f"for example {stripped}/v1"
        )
