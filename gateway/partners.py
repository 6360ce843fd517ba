"""Resolving which partner a request belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.ids import ID_RULE, is_valid_id
from gateway.errors import APIError

PARTNER_HEADER = "x-partner-id"
SESSION_HEADER = "x-session-id"


@dataclass(frozen=True)
class Partner:
    """The partner a request is served for; anonymous partners' turns are never used for training."""

    id: str
    anonymous: bool
    source: str


def validate_id(value: str, *, param: str, kind: str) -> str:
    if not is_valid_id(value):
        raise APIError(400, f"invalid {kind} {value!r}: use {ID_RULE}", param=param, code="invalid_value")
    return value


def resolve_partner(
    *, header: str | None, user: str | None, safety_identifier: str | None, anonymous_id: str
) -> Partner:
    """Takes the partner from the X-Partner-ID header, else the body's ``user``, else ``safety_identifier``."""
    candidates = (("X-Partner-ID", header), ("user", user), ("safety_identifier", safety_identifier))
    for source, value in candidates:
        if value:
            partner_id = validate_id(value, param=source, kind="partner id")
            if partner_id == anonymous_id:
                raise APIError(400, f"partner id {partner_id!r} is reserved for requests without one", param=source)
            return Partner(id=partner_id, anonymous=False, source=source)
    return Partner(id=anonymous_id, anonymous=True, source="none")
