"""OpenAI routes: chat completions, legacy completions and models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from adapters.registry import CONVENTION_OWNER, AdapterVersion, adapter_model_id, fetch_adapters
from adapters.settings import ModelEntry
from gateway import chat, completions, upstream
from gateway.errors import APIError
from gateway.partners import resolve_partner, validate_id
from gateway.prometheus_middleware import note_model
from gateway.routing import model_not_found, resolve_route
from gateway.schemas import ChatCompletionRequest, CompletionRequest
from gateway.services import Services, get_services

router = APIRouter(prefix="/v1", tags=["openai"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    request: Request,
    body: ChatCompletionRequest,
    services: ServicesDep,
    x_partner_id: Annotated[str | None, Header()] = None,
    x_session_id: Annotated[str | None, Header()] = None,
    x_adapter: Annotated[str | None, Header()] = None,
) -> Response:
    note_model(request, body.model)
    partner = resolve_partner(
        header=x_partner_id,
        user=body.user,
        safety_identifier=body.safety_identifier,
        anonymous_id=services.settings.anonymous_partner_id,
    )
    route = await resolve_route(body.model, partner, services, requested_adapter=x_adapter)
    if not route.is_local:
        return await upstream.serve_upstream_chat(body, route.entry, partner, x_session_id, services)

    context = await chat.prepare(body, route, partner, x_session_id, services)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return chat.stream(context, services, include_usage=include_usage)
    return await chat.complete(context, services, request)


@router.post("/completions", response_model=None)
async def create_completion(
    request: Request,
    body: CompletionRequest,
    services: ServicesDep,
    x_partner_id: Annotated[str | None, Header()] = None,
    x_adapter: Annotated[str | None, Header()] = None,
) -> JSONResponse | StreamingResponse:
    note_model(request, body.model)
    partner = resolve_partner(
        header=x_partner_id, user=body.user, safety_identifier=None, anonymous_id=services.settings.anonymous_partner_id
    )
    route = await resolve_route(body.model, partner, services, requested_adapter=x_adapter)
    if not route.is_local:
        # TODO: forward legacy completions to OpenAI-compatible upstreams too.
        raise APIError(
            400,
            f"model {body.model!r} is served upstream; /v1/completions serves only the local model",
            param="model",
            code="unsupported_model",
        )

    context = completions.prepare(body, route, partner, services)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return completions.stream(context, services, include_usage=include_usage)
    return await completions.complete(context, services)


def _entry_object(entry: ModelEntry) -> dict[str, Any]:
    owner = "convention-gateway" if entry.litellm_params.is_local else entry.litellm_params.provider
    return {"id": entry.model_name, "object": "model", "created": 0, "owned_by": owner}


def _adapter_object(adapter: AdapterVersion) -> dict[str, Any]:
    return {
        "id": adapter_model_id(adapter),
        "object": "model",
        "created": adapter.created_at,
        "owned_by": adapter.partner_id,
        "parent": adapter.base_model,
        "root": adapter.base_model,
    }


async def _partner_adapters(x_partner_id: str | None, services: Services) -> list[AdapterVersion]:
    """Returns the convention adapter versions and the calling partner's; other partners' are never listed."""
    if services.settings.local_model is None:
        return []
    adapters = await fetch_adapters(services.redis, services.keys, CONVENTION_OWNER)
    if x_partner_id:
        validate_id(x_partner_id, param="X-Partner-ID", kind="partner id")
        adapters += await fetch_adapters(services.redis, services.keys, x_partner_id)
    return adapters


@router.get("/models")
async def list_models(services: ServicesDep, x_partner_id: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Lists the configured models and, for the partner named by X-Partner-ID, its adapter versions."""
    data = [_entry_object(entry) for entry in services.settings.model_list]
    data += [_adapter_object(adapter) for adapter in await _partner_adapters(x_partner_id, services)]
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
async def retrieve_model(
    model: str, services: ServicesDep, x_partner_id: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    entry = services.settings.find_model(model)
    if entry is not None:
        return _entry_object(entry)
    for adapter in await _partner_adapters(x_partner_id, services):
        if adapter_model_id(adapter) == model:
            return _adapter_object(adapter)
    raise model_not_found(model, services)
