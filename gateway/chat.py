"""Serving one chat completion on the local engine: checks, generation, streaming and recording the turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import jinja2
import redis
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from adapters.decoding import SamplingParams
from adapters.engine import (
    ContextLengthError,
    EngineNotReadyError,
    EngineOverloadedError,
    GenerationOutput,
    LocalEngine,
    TextDelta,
)
from adapters.registry import AdapterVersion
from gateway.continuation import check_continuation, history_messages
from gateway.errors import APIError, error_body
from gateway.logprobs import chat_logprobs
from gateway.partners import Partner, validate_id
from gateway.routing import Route
from gateway.sampling import choice_seed, resolve_max_tokens, sampling_params
from gateway.schemas import UNSUPPORTED_FIELDS, ChatCompletionRequest
from gateway.services import Services
from gateway.sessions import build_turn, new_session_id

logger = logging.getLogger(__name__)

NO_ADAPTER = "none"
RETRY_AFTER_S = "5"
SSE_DONE = "data: [DONE]\n\n"
DISCONNECT_POLL_S = 0.5


def adapter_header(adapter: AdapterVersion | None) -> str:
    """Returns the X-Adapter value: ``<partner_id>/<version>``, or ``none`` when the base model serves."""
    return adapter.name if adapter is not None else NO_ADAPTER


@dataclass
class ChatContext:
    """Everything decided about a request before generation starts."""

    request_id: str
    partner: Partner
    session_id: str
    model: str
    messages: list[dict[str, str]]
    prompt_ids: list[int]
    params: SamplingParams
    choices: int
    adapter: AdapterVersion | None
    created: int
    started_at: float
    continue_final_message: bool = False
    # False when the prompt did not end with the assistant's header (a continued or raw rendering): such a turn's
    # reply was shaped by the client, so it is stored but never trained on.
    generation_prompt_added: bool = True

    @property
    def adapter_header(self) -> str:
        return adapter_header(self.adapter)

    def headers(self) -> dict[str, str]:
        return {"X-Adapter": self.adapter_header, "X-Session-ID": self.session_id, "X-Request-ID": self.request_id}

    def choice_params(self, index: int) -> SamplingParams:
        return replace(self.params, seed=choice_seed(self.params.seed, index))


def check_request(body: ChatCompletionRequest) -> None:
    """Rejects fields the local engine cannot honour, with a 400 that names the field."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED_FIELDS:
        if extra.get(name) not in (None, False, [], {}):
            raise APIError(
                400, f"'{name}' is not supported by the local engine", param=name, code="unsupported_parameter"
            )

    if body.response_format not in (None, {"type": "text"}):
        raise APIError(
            400,
            "only response_format {'type': 'text'} is supported by the local engine",
            param="response_format",
            code="unsupported_parameter",
        )
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs", code="invalid_value")
    for message in body.messages:
        if message.role in ("tool", "function") or (message.model_extra or {}).get("tool_calls"):
            raise APIError(
                400,
                "tool messages and tool calls are not supported by the local engine",
                param="messages",
                code="unsupported_parameter",
            )
        if isinstance(message.content, list) and any(part.type != "text" for part in message.content):
            raise APIError(400, "only text content parts are supported", param="messages", code="unsupported_parameter")


def engine_errors_to_api(error: Exception) -> APIError:
    """Maps the local engine's admission errors to OpenAI statuses."""
    if isinstance(error, EngineOverloadedError):
        return APIError(503, str(error), code="engine_overloaded", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(error, EngineNotReadyError):
        return APIError(503, str(error), code="model_loading", headers={"Retry-After": RETRY_AFTER_S})
    return APIError(400, str(error), param="messages", code="context_length_exceeded")


def check_loaded(engine: LocalEngine) -> None:
    """Raises a 500 when the base model failed to load and a 503 while it is still loading."""
    if engine.load_error is not None:
        raise APIError(
            500,
            f"model {engine.model_name} failed to load ({engine.load_error}); fix the model entry and restart",
            code="model_load_failed",
        )
    if not engine.ready:
        raise engine_errors_to_api(EngineNotReadyError(f"model {engine.model_name} is still loading; retry shortly"))


def check_capacity(engine: LocalEngine) -> None:
    check_loaded(engine)
    if engine.pending_requests >= engine.max_pending_requests:
        overloaded = EngineOverloadedError(
            f"model {engine.model_name} already has {engine.pending_requests} requests waiting; retry shortly"
        )
        raise engine_errors_to_api(overloaded)


async def prepare(
    body: ChatCompletionRequest, route: Route, partner: Partner, session_header: str | None, services: Services
) -> ChatContext:
    check_request(body)
    check_continuation(body)
    engine = services.local_engine()
    check_capacity(engine)

    messages = body.plain_messages()
    # Rendering and tokenizing a long conversation takes a while, so it runs off the event loop.
    prompt_ids = await asyncio.to_thread(rendered_prompt_ids, engine, messages, body)
    requested = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = sampling_params(
        max_tokens=resolve_max_tokens(requested, services.settings.default_max_tokens, len(prompt_ids), engine, param),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        vocab_size=engine.vocab_size,
    )

    return ChatContext(
        request_id=f"chatcmpl-{secrets.token_hex(12)}",
        partner=partner,
        session_id=await resolve_session_id(
            partner,
            history_messages(messages, continue_final_message=body.continue_final_message),
            session_header,
            services,
        ),
        model=body.model,
        messages=messages,
        prompt_ids=prompt_ids,
        params=params,
        choices=body.n,
        adapter=route.adapter,
        created=int(time.time()),
        started_at=time.time(),
        continue_final_message=body.continue_final_message,
        generation_prompt_added=body.add_generation_prompt and not body.continue_final_message,
    )


def rendered_prompt_ids(engine: LocalEngine, messages: list[dict[str, str]], body: ChatCompletionRequest) -> list[int]:
    """Applies the chat template with the request's generation prompt and continuation flags."""
    try:
        return engine.chat_prompt_ids(
            messages,
            add_generation_prompt=body.add_generation_prompt and not body.continue_final_message,
            continue_final_message=body.continue_final_message,
        )
    except (ValueError, jinja2.TemplateError) as error:
        param = "continue_final_message" if body.continue_final_message else "messages"
        raise APIError(
            400, f"the model's chat template cannot render these messages: {error}", param=param, code="invalid_value"
        ) from error


async def resolve_session_id(
    partner: Partner, messages: list[dict[str, str]], session_header: str | None, services: Services
) -> str:
    if session_header:
        return validate_id(session_header, param="X-Session-ID", kind="session id")
    pending = services.turn_writer.pending_session(partner.id, messages)
    if pending is not None:
        return pending
    found = await services.sessions.find_session(partner.id, messages)
    return found or new_session_id()


async def complete(context: ChatContext, services: Services, request: Request) -> Response:
    engine = services.local_engine()
    outputs = []
    async with cancel_on_disconnect(request) as disconnect:
        for index in range(context.choices):
            try:
                params = context.choice_params(index)
                cancel = disconnect.new_event()
                outputs.append(await engine.generate(context.prompt_ids, params, context.adapter, cancel=cancel))
            except (ContextLengthError, EngineNotReadyError, EngineOverloadedError) as error:
                raise engine_errors_to_api(error) from error
    if await request.is_disconnected():
        logger.info(
            "Request %s (partner %s): client disconnected, turn not stored", context.request_id, context.partner.id
        )
        return Response(status_code=499)

    await record_turn(context, outputs[0], services)
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": output.text, "refusal": None},
            "logprobs": chat_logprobs(output.logprobs, engine.token_text) if output.logprobs is not None else None,
            "finish_reason": output.finish_reason,
        }
        for index, output in enumerate(outputs)
    ]
    body = {
        "id": context.request_id,
        "object": "chat.completion",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": choices,
        "usage": usage(outputs),
    }
    return JSONResponse(body, headers=context.headers())


class DisconnectSignal:
    """Hands out one cancel event per generation and sets all of them when the client disconnects.

    Each generation needs its own event, because the engine sets the event it was given when that generation ends.
    """

    def __init__(self) -> None:
        self.disconnected = False
        self._events: list[threading.Event] = []

    def new_event(self) -> threading.Event:
        event = threading.Event()
        if self.disconnected:
            event.set()
        self._events.append(event)
        return event

    def set(self) -> None:
        self.disconnected = True
        for event in self._events:
            event.set()


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[DisconnectSignal]:
    """Yields a signal whose events are set when the client disconnects, so that generation stops early."""
    signal = DisconnectSignal()

    async def watch() -> None:
        # Starlette only offers polling: is_disconnected() reads the pending ASGI messages without waiting.
        while not await request.is_disconnected():  # noqa: ASYNC110
            await asyncio.sleep(DISCONNECT_POLL_S)
        signal.set()

    watcher = asyncio.create_task(watch())
    try:
        yield signal
    finally:
        watcher.cancel()


def stream(context: ChatContext, services: Services, *, include_usage: bool) -> StreamingResponse:
    return StreamingResponse(
        _stream_events(context, services, include_usage=include_usage),
        media_type="text/event-stream",
        headers={**context.headers(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream_events(context: ChatContext, services: Services, *, include_usage: bool) -> AsyncIterator[str]:
    engine = services.local_engine()
    outputs: list[GenerationOutput] = []
    for index in range(context.choices):
        yield sse(_chunk(context, index, {"role": "assistant", "content": ""}, None, include_usage))
        try:
            async for item in engine.stream(context.prompt_ids, context.choice_params(index), context.adapter):
                if isinstance(item, TextDelta):
                    yield sse(_chunk(context, index, {"content": item.text}, None, include_usage, item, engine))
                else:
                    outputs.append(item)
        except Exception as error:
            yield stream_failure_event(context.request_id, context.partner.id, error)
            yield SSE_DONE
            return
        yield sse(_chunk(context, index, {}, outputs[-1].finish_reason, include_usage))

    try:
        await record_turn(context, outputs[0], services)
    except redis.RedisError as error:
        # The text is already sent, so the client can only learn from an error event that the turn was not stored.
        logger.error("Request %s (partner %s): turn not stored: %s", context.request_id, context.partner.id, error)
        yield sse(error_body(503, STORE_DOWN_EVENT_MESSAGE, code="store_unavailable"))
    if include_usage:
        yield sse({**_chunk(context, 0, {}, None, include_usage), "choices": [], "usage": usage(outputs)})
    yield SSE_DONE


def stream_failure_event(request_id: str, partner_id: str, error: Exception) -> str:
    """Returns the error event that ends a stream whose generation failed after the status line was sent."""
    if isinstance(error, ContextLengthError | EngineNotReadyError | EngineOverloadedError):
        logger.warning("Request %s (partner %s): stream failed, %s", request_id, partner_id, error)
        api_error = engine_errors_to_api(error)
        return sse(error_body(api_error.status_code, api_error.message, param=api_error.param, code=api_error.code))
    logger.error("Request %s (partner %s): stream failed", request_id, partner_id, exc_info=error)
    return sse(error_body(500, "internal server error; see the gateway log", code="internal_error"))


STORE_DOWN_EVENT_MESSAGE = "the turn was not stored: the session store (Redis) is unavailable"


def _chunk(
    context: ChatContext,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    include_usage: bool,
    text_delta: TextDelta | None = None,
    engine: LocalEngine | None = None,
) -> dict[str, Any]:
    logprobs = None
    if text_delta is not None and engine is not None and context.params.logprobs:
        logprobs = chat_logprobs(text_delta.logprobs, engine.token_text)
    chunk: dict[str, Any] = {
        "id": context.request_id,
        "object": "chat.completion.chunk",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(outputs: list[GenerationOutput]) -> dict[str, int]:
    """Returns OpenAI's usage object; the prompt is counted once, whatever the number of choices."""
    prompt_tokens = outputs[0].prompt_tokens if outputs else 0
    completion_tokens = sum(output.completion_tokens for output in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def record_turn(context: ChatContext, output: GenerationOutput, services: Services) -> None:
    """Stores the turn with the first choice's text, which is the reply a client continues the conversation with."""
    turn = build_turn(
        request_id=context.request_id,
        partner_id=context.partner.id,
        session_id=context.session_id,
        trainable=not context.partner.anonymous and context.generation_prompt_added,
        model=context.model,
        adapter=context.adapter.name if context.adapter is not None else None,
        messages=context.messages,
        response_text=output.text,
        finish_reason=output.finish_reason,
        usage=usage([output]),
        created_at=context.started_at,
    )
    turn["planning_tokens"] = output.planning_tokens
    if context.continue_final_message:
        turn["continue_final_message"] = True
    await services.sessions.append_turn(turn)
    logger.debug(
        "Request %s: turn recorded (partner %s, session %s, adapter %s)",
        context.request_id,
        context.partner.id,
        context.session_id,
        context.adapter_header,
    )
