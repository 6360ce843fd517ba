"""Choosing what serves a request: the local base model, one of the partner's adapters, or an upstream model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from adapters.registry import (
    CONVENTION_OWNER,
    AdapterVersion,
    adapter_files_present,
    fetch_active_adapter,
    fetch_adapter,
    parse_adapter_model_id,
)
from adapters.settings import ModelEntry
from gateway.errors import APIError
from gateway.partners import Partner
from gateway.services import Services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """The model entry that serves a request and, for the local engine, the adapter applied."""

    entry: ModelEntry
    adapter: AdapterVersion | None

    @property
    def is_local(self) -> bool:
        return self.entry.litellm_params.is_local


def model_not_found(model: str, services: Services) -> APIError:
    served = ", ".join(entry.model_name for entry in services.settings.model_list)
    return APIError(
        404, f"the model {model!r} does not exist; served models: {served}", param="model", code="model_not_found"
    )


# Request header value that requests the bare local model, without the partner's or the convention adapter.
NO_ADAPTER_REQUESTED = "none"


async def resolve_route(
    model: str, partner: Partner, services: Services, *, requested_adapter: str | None = None
) -> Route:
    """Returns how ``model`` is served for ``partner``; raises a 404 APIError for unknown models.

    ``requested_adapter`` is the request's X-Adapter header: ``none`` serves a local model without any adapter.
    """
    no_adapter = _wants_no_adapter(requested_adapter)
    entry = services.settings.find_model(model)
    if entry is not None:
        adapter = None if no_adapter else await _active_adapter(entry, partner, services)
        return Route(entry=entry, adapter=adapter)

    parsed = parse_adapter_model_id(model)
    local = services.settings.local_model
    if parsed is None or local is None:
        raise model_not_found(model, services)
    if no_adapter:
        raise APIError(
            400,
            f"X-Adapter: none asks for the bare model, but model {model!r} names an adapter version; send the base "
            f"model {local.model_name!r} with X-Adapter: none, or drop the header",
            param="X-Adapter",
            code="invalid_adapter_header",
        )

    base, owner, version = parsed
    if owner != CONVENTION_OWNER and partner.anonymous:
        raise model_not_found(model, services)
    # Another partner's adapter is reported as missing, so that ids of other partners cannot be probed. Convention
    # adapters are shared by every partner.
    visible = owner in (partner.id, CONVENTION_OWNER)
    adapter = await fetch_adapter(services.redis, services.keys, owner, version) if visible else None
    if adapter is None or base != local.model_name or adapter.base_model != base:
        raise model_not_found(model, services)
    if not adapter_files_present(adapter):
        logger.error("Partner %s: adapter %s has no files at %s", partner.id, adapter.name, adapter.path)
        raise APIError(
            503,
            f"the files of adapter {adapter.name} are missing on this gateway",
            param="model",
            code="adapter_unavailable",
        )
    return Route(entry=local, adapter=adapter)


def _wants_no_adapter(requested_adapter: str | None) -> bool:
    if requested_adapter is None:
        return False
    if requested_adapter.strip().lower() == NO_ADAPTER_REQUESTED:
        return True
    raise APIError(
        400,
        f"invalid X-Adapter header {requested_adapter!r}: send 'none' for the bare model, or name an adapter "
        "version as the model (ft:<base>:<partner>:<version>)",
        param="X-Adapter",
        code="invalid_adapter_header",
    )


async def _active_adapter(entry: ModelEntry, partner: Partner, services: Services) -> AdapterVersion | None:
    """Returns the partner's active adapter, else the active convention adapter, else None (the bare base model)."""
    if not entry.litellm_params.is_local:
        return None
    owners = [CONVENTION_OWNER] if partner.anonymous else [partner.id, CONVENTION_OWNER]
    for owner in owners:
        adapter = await fetch_active_adapter(services.redis, services.keys, owner)
        if adapter is None or adapter.base_model != entry.model_name:
            continue
        if adapter_files_present(adapter):
            return adapter
        # The next candidate serves instead, so the partner still gets a reply, and X-Adapter names what served.
        logger.error(
            "Partner %s: active adapter %s has no files at %s; falling back", partner.id, adapter.name, adapter.path
        )
    return None
