"""Serving one chat completion: checks, adapter choice, generation, streaming and recording the turn."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
from fastapi.responses import JSONResponse, StreamingResponse

from adapters.engine import ContextLengthError, EngineNotReadyError, GenerationOutput, SamplingParams
from adapters.registry import AdapterVersion, fetch_active_adapter
from gateway.errors import APIError, error_body
from gateway.partners import Partner, validate_id
from gateway.schemas import UNSUPPORTED_FIELDS, ChatCompletionRequest
from gateway.services import Services
from gateway.sessions import build_turn, new_session_id

logger = logging.getLogger(__name__)

NO_ADAPTER = "none"
RETRY_AFTER_S = "5"


@dataclass
class ChatContext:
    """Everything decided about a request before generation starts."""

    request_id: str
    partner: Partner
    session_id: str
    model: str
    messages: list[dict[str, str]]
    params: SamplingParams
    adapter: AdapterVersion | None
    created: int
    started_at: float

    @property
    def adapter_header(self) -> str:
        return self.adapter.name if self.adapter is not None else NO_ADAPTER

    def headers(self) -> dict[str, str]:
        return {
            "X-Adapter": self.adapter_header,
            "X-Session-ID": self.session_id,
            "X-Request-ID": self.request_id,
        }


def model_not_found(model: str, services: Services) -> APIError:
    served = ", ".join(entry.model_name for entry in services.settings.model_list)
    return APIError(
        404, f"the model {model!r} does not exist; served models: {served}", param="model", code="model_not_found"
    )


def check_request(body: ChatCompletionRequest, services: Services) -> None:
    """Rejects fields the local engine cannot honour, with a 400 that names the field."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED_FIELDS:
        if extra.get(name) not in (None, False, [], {}):
            raise APIError(
                400,
                f"'{name}' is not supported by the local engine",
                param=name,
                code="unsupported_parameter",
            )
    if body.response_format not in (None, {"type": "text"}):
        raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format")
    if body.n != 1:
        raise APIError(400, f"n={body.n} is not supported; the local engine returns one choice", param="n")
    if any(
        isinstance(message.content, list) and any(part.type != "text" for part in message.content)
        for message in body.messages
    ):
        raise APIError(400, "only text content parts are supported", param="messages", code="unsupported_parameter")


async def prepare(
    body: ChatCompletionRequest, partner: Partner, session_header: str | None, services: Services
) -> ChatContext:
    check_request(body, services)
    messages = body.plain_messages()
    max_tokens = body.max_completion_tokens or body.max_tokens or services.settings.default_max_tokens
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )
    try:
        services.local_engine().check_context(messages, max_tokens)
    except EngineNotReadyError as error:
        raise APIError(503, str(error), code="model_loading", headers={"Retry-After": RETRY_AFTER_S}) from error
    except ContextLengthError as error:
        raise APIError(400, str(error), param="messages", code="context_length_exceeded") from error

    session_id = await resolve_session_id(partner, messages, session_header, services)
    adapter = None if partner.anonymous else await fetch_active_adapter(services.redis, services.keys, partner.id)
    if adapter is not None and adapter.base_model != body.model:
        adapter = None
    return ChatContext(
        request_id=f"chatcmpl-{secrets.token_hex(12)}",
        partner=partner,
        session_id=session_id,
        model=body.model,
        messages=messages,
        params=params,
        adapter=adapter,
        created=int(time.time()),
        started_at=time.time(),
    )


async def resolve_session_id(
    partner: Partner, messages: list[dict[str, str]], session_header: str | None, services: Services
) -> str:
    if session_header:
        return validate_id(session_header, param="X-Session-ID", what="session id")
    found = await services.sessions.find_session(partner.id, messages)
    return found or new_session_id()


async def complete(context: ChatContext, services: Services) -> JSONResponse:
    try:
        output = await services.local_engine().generate(context.messages, context.params, context.adapter)
    except ContextLengthError as error:
        raise APIError(400, str(error), param="messages", code="context_length_exceeded") from error

    await record_turn(context, output, services)
    body = {
        "id": context.request_id,
        "object": "chat.completion",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": output.text, "refusal": None},
                "logprobs": None,
                "finish_reason": output.finish_reason,
            }
        ],
        "usage": _usage(output),
    }
    return JSONResponse(body, headers=context.headers())


def stream(context: ChatContext, services: Services, *, include_usage: bool) -> StreamingResponse:
    return StreamingResponse(
        _stream_events(context, services, include_usage=include_usage),
        media_type="text/event-stream",
        headers={**context.headers(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream_events(context: ChatContext, services: Services, *, include_usage: bool) -> AsyncIterator[str]:
    yield _sse(_chunk(context, {"role": "assistant", "content": ""}, None, include_usage))
    output: GenerationOutput | None = None
    try:
        async for item in services.local_engine().stream(context.messages, context.params, context.adapter):
            if isinstance(item, GenerationOutput):
                output = item
            else:
                yield _sse(_chunk(context, {"content": item}, None, include_usage))
    except (ContextLengthError, EngineNotReadyError) as error:
        logger.warning("Request %s (partner %s): stream failed, %s", context.request_id, context.partner.id, error)
        yield _sse(error_body(400, str(error), param="messages", code="generation_failed"))
        yield "data: [DONE]\n\n"
        return

    assert output is not None
    try:
        await record_turn(context, output, services)
    except redis.RedisError as error:
        # The text is already sent, so the client can only learn from an error event that the turn was not stored.
        logger.error("Request %s (partner %s): turn not stored: %s", context.request_id, context.partner.id, error)
        yield _sse(error_body(503, "the turn was not stored: the session store (Redis) is unavailable"))
    yield _sse(_chunk(context, {}, output.finish_reason, include_usage))
    if include_usage:
        yield _sse({**_chunk(context, {}, None, include_usage), "choices": [], "usage": _usage(output)})
    yield "data: [DONE]\n\n"


def _chunk(
    context: ChatContext, delta: dict[str, Any], finish_reason: str | None, include_usage: bool
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": context.request_id,
        "object": "chat.completion.chunk",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(output: GenerationOutput) -> dict[str, int]:
    return {
        "prompt_tokens": output.prompt_tokens,
        "completion_tokens": output.completion_tokens,
        "total_tokens": output.prompt_tokens + output.completion_tokens,
    }


async def record_turn(context: ChatContext, output: GenerationOutput, services: Services) -> None:
    turn = build_turn(
        request_id=context.request_id,
        partner_id=context.partner.id,
        session_id=context.session_id,
        trainable=not context.partner.anonymous,
        model=context.model,
        adapter=context.adapter.name if context.adapter is not None else None,
        messages=context.messages,
        response_text=output.text,
        finish_reason=output.finish_reason,
        usage=_usage(output),
        created_at=context.started_at,
    )
    await services.sessions.append_turn(turn)
    logger.debug(
        "Request %s: turn recorded (partner %s, session %s, adapter %s)",
        context.request_id,
        context.partner.id,
        context.session_id,
        context.adapter_header,
    )
