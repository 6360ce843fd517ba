"""Partner resolution from header, user and safety_identifier."""

from __future__ import annotations

import pytest

from gateway.errors import APIError
from gateway.partners import resolve_partner


def resolve(header: str | None = None, user: str | None = None, safety: str | None = None):
    return resolve_partner(header=header, user=user, safety_identifier=safety, anonymous_id="anonymous")


def test_header_wins_over_body() -> None:
    assert resolve(header="alice", user="bob", safety="carol").id == "alice"


def test_user_used_without_header() -> None:
    assert resolve(user="bob", safety="carol").id == "bob"


def test_safety_identifier_used_last() -> None:
    assert resolve(safety="carol").id == "carol"


def test_no_identity_is_anonymous() -> None:
    partner = resolve()

    assert partner.anonymous is True
    assert partner.id == "anonymous"


def test_invalid_partner_id_rejected() -> None:
    with pytest.raises(APIError) as raised:
        resolve(user="../etc")

    assert raised.value.param == "user"


def test_reserved_anonymous_id_rejected() -> None:
    with pytest.raises(APIError):
        resolve(header="anonymous")
