"""``POST /tokenize`` and ``POST /detokenize`` in vLLM's request and response shapes, for the local model.

Clients use them to count tokens exactly as the local model does and to build ``logit_bias`` maps from the
served tokenizer's ids. Upstream models have no tokenizer on the gateway, so they are rejected.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.engine import LocalEngine
from gateway.chat import check_loaded
from gateway.errors import APIError
from gateway.partners import resolve_partner
from gateway.routing import resolve_route
from gateway.schemas import ChatMessage
from gateway.services import Services, get_services

router = APIRouter(tags=["tokenize"])
ServicesDep = Annotated[Services, Depends(get_services)]


class TokenizeRequest(BaseModel):
    """Either a plain ``prompt`` or chat ``messages`` rendered with the model's chat template."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _check_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of 'prompt' (plain text) or 'messages' (a chat)")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message needs add_generation_prompt set to false")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    tokens: list[int]


async def _local_engine_for(model: str, services: Services, partner_header: str | None) -> LocalEngine:
    """Returns the loaded local engine when ``model`` is served by it; 404 for unknown models, 400 for upstream."""
    partner = resolve_partner(
        header=partner_header, user=None, safety_identifier=None, anonymous_id=services.settings.anonymous_partner_id
    )
    route = await resolve_route(model, partner, services)
    if not route.is_local:
        local = services.settings.local_model
        hint = f"send model {local.model_name!r}" if local is not None else "no local model is configured"
        raise APIError(
            400,
            f"model {model!r} is served upstream; tokenization is only available for the local model ({hint})",
            param="model",
            code="unsupported_model",
        )
    engine = services.local_engine()
    check_loaded(engine)
    return engine


def _chat_ids(engine: LocalEngine, body: TokenizeRequest) -> list[int]:
    assert body.messages is not None
    messages = [
        {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
        for message in body.messages
    ]
    options: dict[str, Any] = {
        "add_generation_prompt": body.add_generation_prompt,
        "continue_final_message": body.continue_final_message,
        "tokenize": True,
    }
    # The chat template writes its own special tokens; vLLM adds none on top by default either.
    if body.add_special_tokens:
        options["add_special_tokens"] = True
    try:
        rendered = engine.tokenizer.apply_chat_template(messages, **options)
    except ValueError as error:
        raise APIError(400, f"the messages cannot be rendered: {error}", param="messages") from error
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    return [int(token) for token in ids]


def _prompt_ids(engine: LocalEngine, body: TokenizeRequest) -> list[int]:
    add_special_tokens = True if body.add_special_tokens is None else body.add_special_tokens
    encoded = engine.tokenizer(body.prompt, add_special_tokens=add_special_tokens)
    return [int(token) for token in encoded["input_ids"]]


@router.post("/tokenize")
async def tokenize(
    body: TokenizeRequest, services: ServicesDep, x_partner_id: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Returns the token ids of a prompt or chat as the local model tokenizes it, and its context window size."""
    engine = await _local_engine_for(body.model, services, x_partner_id)
    # Long prompts take seconds to tokenize, so that work runs off the event loop.
    to_ids = _chat_ids if body.messages is not None else _prompt_ids
    ids = await asyncio.to_thread(to_ids, engine, body)

    result: dict[str, Any] = {"count": len(ids), "max_model_len": engine.context_length, "tokens": ids}
    if body.return_token_strs:
        result["token_strs"] = [str(piece) for piece in engine.tokenizer.convert_ids_to_tokens(ids)]
    return result


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, services: ServicesDep, x_partner_id: Annotated[str | None, Header()] = None
) -> dict[str, str]:
    """Returns the text of token ids of the local model's tokenizer, special tokens included."""
    engine = await _local_engine_for(body.model, services, x_partner_id)
    size = len(engine.tokenizer)
    invalid = [token for token in body.tokens if not 0 <= token < size]
    if invalid:
        raise APIError(
            400,
            f"invalid token id {invalid[0]}: token ids of model {body.model!r} run from 0 to {size - 1}",
            param="tokens",
            code="invalid_value",
        )
    return {"prompt": str(engine.tokenizer.decode(body.tokens))}
