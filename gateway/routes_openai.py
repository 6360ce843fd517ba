"""OpenAI routes: chat completions and models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, StreamingResponse

from gateway import chat, upstream
from gateway.errors import APIError
from gateway.partners import resolve_partner
from gateway.schemas import ChatCompletionRequest
from gateway.services import Services, get_services

router = APIRouter(prefix="/v1", tags=["openai"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    services: ServicesDep,
    x_partner_id: Annotated[str | None, Header()] = None,
    x_session_id: Annotated[str | None, Header()] = None,
) -> JSONResponse | StreamingResponse:
    partner = resolve_partner(
        header=x_partner_id,
        user=body.user,
        safety_identifier=body.safety_identifier,
        anonymous_id=services.settings.anonymous_partner_id,
    )
    entry = services.settings.find_model(body.model)
    if entry is None:
        raise chat.model_not_found(body.model, services)
    if not entry.litellm_params.is_local:
        return await upstream.serve_upstream_chat(body, entry, partner, x_session_id, services)

    context = await chat.prepare(body, partner, x_session_id, services)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return chat.stream(context, services, include_usage=include_usage)
    return await chat.complete(context, services)


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "convention-gateway"}


@router.get("/models")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [_model_object(entry.model_name, 0) for entry in services.settings.model_list],
    }


@router.get("/models/{model}")
async def retrieve_model(model: str, services: ServicesDep) -> dict[str, Any]:
    for entry in services.settings.model_list:
        if entry.model_name == model:
            return _model_object(entry.model_name, 0)
    raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
