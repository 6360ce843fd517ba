"""Forwarding chat completions to upstream providers and recording each turn in the partner's session history.

Providers that speak OpenAI's wire format (``openai/``, ``hosted_vllm/``, ...) get a plain HTTP pass-through on the
shared ``httpx.AsyncClient``. The client's JSON goes upstream with only ``model`` replaced, and the upstream's bytes
come back unchanged, because litellm would add several milliseconds of CPU per request. Other providers
(``anthropic/``, ``gemini/``, ...) go through ``litellm.acompletion``, which translates to and from their APIs.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import aiohttp
import anyio
import httpx
import redis
from fastapi.responses import JSONResponse, StreamingResponse

from adapters.settings import ModelEntry
from gateway.chat import NO_ADAPTER, resolve_session_id
from gateway.continuation import check_continuation, history_messages
from gateway.errors import APIError, error_body
from gateway.partners import Partner
from gateway.schemas import ChatCompletionRequest
from gateway.services import UPSTREAM_CONNECT_TIMEOUT_S, Services
from gateway.sessions import build_turn

logger = logging.getLogger(__name__)

OPENAI_API_BASE = "https://api.openai.com/v1"
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0
RETRY_AFTER_STATUSES = (429, 503)
MAX_ERROR_TEXT = 500
DONE_EVENT = "data: [DONE]\n\n"
STORE_DOWN_MESSAGE = "the turn was not stored: the session store (Redis) is unavailable"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# OpenAI chat completion fields handed to litellm.acompletion as keyword arguments. It is an allow-list because
# litellm also takes api_base, base_url, api_key, extra_headers and similar as keyword arguments, and a client
# must not be able to send the configured key to a host of its choice.
LITELLM_FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

T = TypeVar("T")


@dataclass
class UpstreamCall:
    """One chat completion forwarded upstream: who sent it, the session it belongs to and the serving entry."""

    request_id: str
    partner: Partner
    entry: ModelEntry
    api_key: str | None = field(default=None, repr=False)
    session_id: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    continue_final_message: bool = False
    # False when the client shaped the start of the reply; such turns are stored but never trained on.
    generation_prompt_added: bool = True

    def redact(self, text: str) -> str:
        """Returns ``text`` without the API key, for upstream messages that echo it."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def headers(self, response_id: str | None) -> dict[str, str]:
        return {
            "X-Adapter": NO_ADAPTER,
            "X-Session-ID": self.session_id,
            "X-Request-ID": response_id or self.request_id,
        }


@dataclass
class Outcome:
    """The part of the upstream's response that the turn stores: choice 0's text, its finish reason and the usage."""

    response_id: str | None = None
    model: str | None = None
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    @classmethod
    def from_completion(cls, completion: dict[str, Any]) -> Outcome:
        outcome = cls(response_id=completion.get("id"), model=completion.get("model"), usage=completion.get("usage"))
        choice = _first_choice(completion.get("choices"))
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            outcome.parts.append(message["content"])
        outcome.finish_reason = choice.get("finish_reason")
        return outcome

    def add_chunk(self, chunk: dict[str, Any]) -> bool:
        """Accumulates one streamed chunk. Returns True for the usage-only chunk, which has a usage but no choices."""
        self.response_id = self.response_id or chunk.get("id")
        self.model = chunk.get("model") or self.model
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return bool(usage)
        for choice in choices:
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return False


class AttemptFailed(Exception):
    """A failed upstream attempt. ``error`` is what the client gets when no retry is left or allowed."""

    def __init__(self, error: APIError, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after_s = retry_after_s


async def serve_upstream_chat(
    body: ChatCompletionRequest, entry: ModelEntry, partner: Partner, session_header: str | None, services: Services
) -> JSONResponse | StreamingResponse:
    """Serves a chat completion from the entry's upstream backend and records the turn."""
    check_continuation(body)
    call = UpstreamCall(request_id=f"chatcmpl-{secrets.token_hex(12)}", partner=partner, entry=entry)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if entry.litellm_params.is_openai_compatible:
        request = _checked(call, lambda: _build_request(body, call, services))
        await _resolve_session(body, call, session_header, services)
        if body.stream:
            return await _stream_direct(request, call, services, include_usage=include_usage)
        return await _complete_direct(request, call, services)

    arguments = _checked(call, lambda: _litellm_arguments(body, call))
    await _resolve_session(body, call, session_header, services)
    if body.stream:
        return await _stream_with_litellm(arguments, call, services, include_usage=include_usage)
    return await _complete_with_litellm(arguments, call, services)


def _checked(call: UpstreamCall, prepare: Callable[[], T]) -> T:
    """Resolves the API key and runs ``prepare``. A configuration or request error is logged, then raised."""
    try:
        call.api_key = call.entry.litellm_params.resolve_api_key()
    except ValueError as error:
        raise _logged(call, _config_error(call.entry, str(error))) from error
    try:
        return prepare()
    except APIError as error:
        raise _logged(call, error) from error


async def _resolve_session(
    body: ChatCompletionRequest, call: UpstreamCall, session_header: str | None, services: Services
) -> None:
    call.messages = body.plain_messages()
    call.continue_final_message = body.continue_final_message
    call.generation_prompt_added = body.add_generation_prompt and not body.continue_final_message
    history = history_messages(call.messages, continue_final_message=body.continue_final_message)
    call.session_id = await resolve_session_id(call.partner, history, session_header, services)


def _config_error(entry: ModelEntry, problem: str) -> APIError:
    message = f"invalid configuration of model {entry.model_name!r}: {problem}. Fix its entry in model_list."
    return APIError(502, message, code="upstream_not_configured")


# --- OpenAI-compatible providers: plain HTTP ---


def _chat_completions_url(entry: ModelEntry) -> str:
    params = entry.litellm_params
    api_base = params.api_base or (OPENAI_API_BASE if params.provider == "openai" else None)
    if api_base is None:
        raise _config_error(entry, f"litellm_params.api_base is required for provider {params.provider!r}")
    return f"{api_base.rstrip('/')}/chat/completions"


@dataclass(frozen=True)
class UpstreamRequest:
    """A request to an OpenAI-compatible upstream, built once so that every retry sends the same bytes."""

    url: str
    content: bytes
    headers: dict[str, str]
    timeout_s: float

    def for_httpx(self, client: httpx.AsyncClient) -> httpx.Request:
        timeout = httpx.Timeout(self.timeout_s, connect=min(UPSTREAM_CONNECT_TIMEOUT_S, self.timeout_s))
        return client.build_request("POST", self.url, content=self.content, headers=self.headers, timeout=timeout)


def _build_request(body: ChatCompletionRequest, call: UpstreamCall, services: Services) -> UpstreamRequest:
    params = call.entry.litellm_params
    payload = body.model_dump(exclude_unset=True)
    payload["model"] = params.target
    if body.stream:
        # Asked for even when the client did not, so that the turn records the upstream's token counts.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    headers = {"Content-Type": "application/json"}
    if call.api_key:
        headers["Authorization"] = f"Bearer {call.api_key}"
    url = _chat_completions_url(call.entry)
    _check_url(call.entry, url)
    return UpstreamRequest(
        url=url, content=json.dumps(payload, ensure_ascii=False).encode(), headers=headers, timeout_s=params.timeout
    )


@functools.lru_cache(maxsize=256)
def _url_problem(url: str) -> str | None:
    """Returns why httpx rejects ``url``, or None; cached because the URL of an entry never changes."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        return str(error)
    return (
        None if parsed.scheme in ("http", "https") and parsed.host else "the URL needs http:// or https:// and a host"
    )


def _check_url(entry: ModelEntry, url: str) -> None:
    problem = _url_problem(url)
    if problem is not None:
        raise _config_error(entry, f"invalid litellm_params.api_base ({problem})")


async def _complete_direct(request: UpstreamRequest, call: UpstreamCall, services: Services) -> JSONResponse:
    content = await _with_retries(call, lambda: _send_once(request, call, services))
    try:
        completion = json.loads(content)
    except ValueError:
        completion = None
    if not isinstance(completion, dict):
        raise _logged(
            call, APIError(502, "the upstream returned a response that is not a JSON object", code="upstream_error")
        )

    outcome = Outcome.from_completion(completion)
    # Written after the response goes out: this path is measured against a bare upstream call, and the
    # turn writer retries failed writes.
    services.turn_writer.submit(_turn(call, outcome))
    return RawJSONResponse(content, headers=call.headers(outcome.response_id))


async def _send_once(request: UpstreamRequest, call: UpstreamCall, services: Services) -> bytes:
    """Sends a non-streamed request and returns the body of a 2xx response.

    aiohttp, not httpx, sends here because its client costs a fraction of httpx's CPU per request, and this path
    is measured against a bare upstream call.
    """
    timeout = aiohttp.ClientTimeout(total=request.timeout_s, connect=min(UPSTREAM_CONNECT_TIMEOUT_S, request.timeout_s))
    try:
        async with services.upstream_session.post(
            request.url, data=request.content, headers=request.headers, timeout=timeout
        ) as response:
            content = await response.read()
            status, headers = response.status, dict(response.headers)
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _transport_failure(call, error) from error
    if not 200 <= status < 300:
        raise _status_failure(call, httpx.Response(status, headers=headers, content=content))
    return content


async def _stream_direct(
    request: UpstreamRequest, call: UpstreamCall, services: Services, *, include_usage: bool
) -> StreamingResponse:
    response, lines, first_data = await _with_retries(call, lambda: _open_stream_once(request, call, services))
    outcome = Outcome()
    try:
        first_event = _direct_event(call, first_data, outcome, include_usage)
    except AttemptFailed as failure:
        await response.aclose()
        raise _logged(call, failure.error) from failure
    events = _relay_direct(call, response, lines, first_event, outcome, services, include_usage=include_usage)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**call.headers(outcome.response_id), **STREAM_HEADERS}
    )


async def _open_stream_once(
    request: UpstreamRequest, call: UpstreamCall, services: Services
) -> tuple[httpx.Response, AsyncIterator[str], str]:
    """Opens the upstream stream and reads its first event, so that a failure up to there can still be retried."""
    # NOTE: a stream has no deadline for the whole response. The entry's timeout bounds each read, so a stream
    # whose chunks keep arriving can run longer than that.
    try:
        response = await services.upstream_http.send(request.for_httpx(services.upstream_http), stream=True)
    except httpx.RequestError as error:
        raise _transport_failure(call, error) from error
    try:
        if not response.is_success:
            await response.aread()
            raise _status_failure(call, response)
        lines = response.aiter_lines()
        first_data = await _next_data(lines)
        if first_data is None or first_data == "[DONE]":
            error = APIError(502, "the upstream ended the stream before sending a chunk", code="upstream_unavailable")
            raise AttemptFailed(error, retryable=True)
        return response, lines, first_data
    except httpx.RequestError as error:
        await response.aclose()
        raise _transport_failure(call, error) from error
    except BaseException:
        await response.aclose()
        raise


async def _next_data(lines: AsyncIterator[str]) -> str | None:
    async for line in lines:
        if line.startswith("data:"):
            return line[5:].strip()
    return None


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        error = APIError(502, "the upstream sent a stream event that is not a JSON object", code="upstream_error")
        raise AttemptFailed(error, retryable=False)
    return chunk


def _direct_event(call: UpstreamCall, data: str, outcome: Outcome, include_usage: bool) -> str | None:
    """Returns the upstream's event unchanged, or None for a usage-only chunk that the client did not ask for."""
    chunk = _parse_chunk(data)
    if "error" in chunk:
        raise AttemptFailed(_stream_error(call, chunk), retryable=False)
    usage_only = outcome.add_chunk(chunk)
    if usage_only and not include_usage:
        return None
    return f"data: {data}\n\n"


async def _relay_direct(
    call: UpstreamCall,
    response: httpx.Response,
    lines: AsyncIterator[str],
    first_event: str | None,
    outcome: Outcome,
    services: Services,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Sends each upstream event on as it arrives, then records the turn and ends with ``[DONE]``."""
    finished = False
    try:
        if first_event is not None:
            yield first_event
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            event = _direct_event(call, data, outcome, include_usage)
            if event is not None:
                yield event
    except (httpx.RequestError, AttemptFailed) as error:
        failure = error if isinstance(error, AttemptFailed) else _transport_failure(call, error)
        yield _error_event(call, failure.error)
        yield DONE_EVENT
        return
    finally:
        # Shielded because a client that disconnects cancels this generator, and the connection must still close.
        with anyio.CancelScope(shield=True):
            await response.aclose()

    async for event in _finish_stream(call, outcome, services, finished=finished):
        yield event


async def _finish_stream(
    call: UpstreamCall, outcome: Outcome, services: Services, *, finished: bool
) -> AsyncIterator[str]:
    if not finished and outcome.finish_reason is None:
        error = APIError(502, "the upstream closed the stream before it finished", code="upstream_unavailable")
        yield _error_event(call, error)
        yield DONE_EVENT
        return
    try:
        await _record(call, outcome, services)
    except redis.RedisError as error:
        # The text is already sent, so the client can only learn from an error event that the turn was not stored.
        logger.error("Request %s (partner %s): turn not stored: %s", call.request_id, call.partner.id, error)
        yield _sse(error_body(503, STORE_DOWN_MESSAGE, code="store_unavailable"))
    yield DONE_EVENT


# --- Retries and errors ---


async def _with_retries(call: UpstreamCall, attempt: Callable[[], Awaitable[T]]) -> T:
    """Runs ``attempt`` until it succeeds, up to ``max_retries`` more times for retryable failures."""
    max_retries = call.entry.litellm_params.max_retries
    for retry in range(max_retries + 1):
        try:
            return await attempt()
        except AttemptFailed as failure:
            delay_s = _retry_delay(failure, retry)
            if retry == max_retries or delay_s is None:
                raise _logged(call, failure.error) from failure
            logger.info(
                "Request %s (partner %s): model %s: %s, retry %d of %d in %.1f s",
                call.request_id,
                call.partner.id,
                call.entry.model_name,
                failure.error.message,
                retry + 1,
                max_retries,
                delay_s,
            )
            await asyncio.sleep(delay_s)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_delay(failure: AttemptFailed, retry: int) -> float | None:
    """Returns seconds to wait before the next attempt, or None when the failure must go to the client now."""
    if not failure.retryable:
        return None
    if failure.retry_after_s is not None:
        # A longer wait than this is the client's decision, so the 429 or 503 goes to it with the Retry-After.
        return failure.retry_after_s if failure.retry_after_s <= MAX_BACKOFF_S else None
    return min(FIRST_BACKOFF_S * 2**retry, MAX_BACKOFF_S)


def _transport_failure(call: UpstreamCall, error: BaseException) -> AttemptFailed:
    name = call.entry.model_name
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        timeout_s = call.entry.litellm_params.timeout
        message = f"the upstream of model {name!r} did not respond within {timeout_s:g} s"
        return AttemptFailed(APIError(504, message, code="upstream_timeout"), retryable=True)
    detail = str(error) or type(error).__name__
    message = f"the upstream of model {name!r} is unavailable: {detail}"
    retryable = isinstance(
        error,
        httpx.NetworkError | httpx.RemoteProtocolError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError,
    )
    return AttemptFailed(APIError(502, message, code="upstream_unavailable"), retryable=retryable)


def _status_failure(call: UpstreamCall, response: httpx.Response) -> AttemptFailed:
    status = response.status_code
    message, param, code = _upstream_error_fields(response)
    headers: dict[str, str] = {}
    retry_after = response.headers.get("retry-after")
    if status in RETRY_AFTER_STATUSES and retry_after:
        headers["Retry-After"] = retry_after
    retryable = (status == 429 or 500 <= status < 600) and response.headers.get("x-should-retry") != "false"
    if not 400 <= status < 600:
        message = f"the upstream returned the unexpected status {status}: {message}"
        status = 502
    elif status in (401, 403):
        # The upstream rejected the gateway's own key, not the client's credentials, so the client gets a 502.
        name = call.entry.model_name
        message = f"the upstream of model {name!r} rejected the gateway's credentials ({message}); check its api_key"
        status, code = 502, "upstream_authentication_failed"
    error = APIError(status, call.redact(message), param=param, code=code or "upstream_error", headers=headers)
    return AttemptFailed(error, retryable=retryable, retry_after_s=_seconds(retry_after))


def _upstream_error_fields(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """Returns the message, param and code of an upstream error body in OpenAI's, vLLM's or FastAPI's shape."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message, param, code = error.get("message"), error.get("param"), error.get("code")
    elif isinstance(payload, dict):
        message, param, code = error or payload.get("detail") or payload.get("message"), None, None
    else:
        message, param, code = response.text[:MAX_ERROR_TEXT], None, None
    message = str(message) if message else f"the upstream returned HTTP {response.status_code}"
    return message, param if isinstance(param, str) else None, code if isinstance(code, str) else None


def _stream_error(call: UpstreamCall, chunk: dict[str, Any]) -> APIError:
    """Maps an ``{"error": ...}`` event inside the upstream's stream.

    vLLM's ErrorResponse puts the HTTP status in an integer ``code``.
    """
    error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    message = call.redact(str(error.get("message") or "the upstream sent an error event"))
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return APIError(status, message, param=param, code=code if isinstance(code, str) else "upstream_error")


def _seconds(retry_after: str | None) -> float | None:
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None


def _logged(call: UpstreamCall, error: APIError) -> APIError:
    """Logs the error that goes to the client and adds the gateway's request id to its headers."""
    log = logger.warning if error.status_code < 500 else logger.error
    log(
        "Request %s (partner %s): model %s (%s) failed with %d: %s",
        call.request_id,
        call.partner.id,
        call.entry.model_name,
        call.entry.litellm_params.model,
        error.status_code,
        error.message,
    )
    error.headers = {**error.headers, "X-Request-ID": call.request_id}
    return error


def _error_event(call: UpstreamCall, error: APIError) -> str:
    _logged(call, error)
    return _sse(error_body(error.status_code, error.message, param=error.param, code=error.code))


# --- Other providers: litellm ---

_litellm: ModuleType | None = None


async def _load_litellm() -> ModuleType:
    """Imports litellm on first use, in a thread, because the import takes seconds and would block the event loop."""
    global _litellm
    if _litellm is None:
        # Without this, the import downloads the model cost map from the internet.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        module = await asyncio.to_thread(importlib.import_module, "litellm")
        module.suppress_debug_info = True
        _litellm = module
    return _litellm


def _litellm_arguments(body: ChatCompletionRequest, call: UpstreamCall) -> dict[str, Any]:
    params = call.entry.litellm_params
    fields = body.model_dump(exclude_unset=True)
    messages = fields.pop("messages")
    for name in ("model", "stream", "stream_options"):
        fields.pop(name, None)
    _drop_template_defaults(fields, params.provider)
    for name in fields:
        if name not in LITELLM_FIELDS:
            raise APIError(
                400,
                f"'{name}' is not forwarded to {params.provider!r} models: through litellm the gateway forwards "
                "only OpenAI chat completion parameters",
                param=name,
                code="unsupported_parameter",
            )
    arguments: dict[str, Any] = {
        **fields,
        "model": params.model,
        "messages": messages,
        "api_base": params.api_base,
        "api_key": call.api_key,
        "timeout": params.timeout,
        "num_retries": params.max_retries,
        "stream": body.stream,
    }
    if body.stream:
        arguments["stream_options"] = {"include_usage": True}
    return arguments


def _drop_template_defaults(fields: dict[str, Any], provider: str) -> None:
    """Drops vLLM's chat template flags at their defaults and rejects a continuation, which litellm cannot send."""
    if fields.pop("continue_final_message", False):
        raise APIError(
            400,
            f"continue_final_message is not supported for {provider!r} models, which are served through litellm; "
            "use the local model or an OpenAI-compatible upstream such as vLLM",
            param="continue_final_message",
            code="unsupported_parameter",
        )
    if fields.get("add_generation_prompt") is True:
        del fields["add_generation_prompt"]


async def _complete_with_litellm(arguments: dict[str, Any], call: UpstreamCall, services: Services) -> JSONResponse:
    litellm = await _load_litellm()
    import openai

    try:
        response = await litellm.acompletion(**arguments)
    except openai.APIError as error:
        raise _logged(call, _litellm_error(call, error)) from error
    completion = _without_provider_prefix(response.model_dump(mode="json"), call)
    outcome = Outcome.from_completion(completion)
    await _record(call, outcome, services)
    return JSONResponse(completion, headers=call.headers(outcome.response_id))


async def _stream_with_litellm(
    arguments: dict[str, Any], call: UpstreamCall, services: Services, *, include_usage: bool
) -> StreamingResponse:
    litellm = await _load_litellm()
    import openai

    try:
        stream = await litellm.acompletion(**arguments)
        first = await anext(stream, None)
    except openai.APIError as error:
        raise _logged(call, _litellm_error(call, error)) from error

    outcome = Outcome()
    first_event = _litellm_event(call, first, outcome, include_usage) if first is not None else None
    events = _relay_litellm(call, stream, first_event, outcome, services, include_usage=include_usage)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**call.headers(outcome.response_id), **STREAM_HEADERS}
    )


def _litellm_event(call: UpstreamCall, chunk: Any, outcome: Outcome, include_usage: bool) -> str | None:
    data = _without_provider_prefix(chunk.model_dump(mode="json"), call)
    usage_only = outcome.add_chunk(data)
    if not include_usage:
        data.pop("usage", None)
        if usage_only:
            return None
    return _sse(data)


async def _relay_litellm(
    call: UpstreamCall,
    stream: AsyncIterator[Any],
    first_event: str | None,
    outcome: Outcome,
    services: Services,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    import openai

    try:
        if first_event is not None:
            yield first_event
        async for chunk in stream:
            event = _litellm_event(call, chunk, outcome, include_usage)
            if event is not None:
                yield event
    except openai.APIError as error:
        yield _error_event(call, _litellm_error(call, error))
        yield DONE_EVENT
        return

    async for event in _finish_stream(call, outcome, services, finished=True):
        yield event


def _without_provider_prefix(payload: dict[str, Any], call: UpstreamCall) -> dict[str, Any]:
    """Removes the ``<provider>/`` that litellm puts before some providers' model names, as the upstream sent none."""
    model = payload.get("model")
    if isinstance(model, str):
        payload["model"] = model.removeprefix(f"{call.entry.litellm_params.provider}/")
    return payload


def _litellm_error(call: UpstreamCall, error: Exception) -> APIError:
    """Maps a litellm exception, a subclass of the openai package's ``APIError``, by its ``status_code``."""
    import openai

    message = call.redact(str(getattr(error, "message", None) or error))
    if isinstance(error, openai.APITimeoutError):
        return APIError(504, message, code="upstream_timeout")
    if isinstance(error, openai.APIConnectionError):
        return APIError(502, message, code="upstream_unavailable")
    status = getattr(error, "status_code", None)
    if not isinstance(status, int) or not 400 <= status < 600:
        return APIError(502, message, code="upstream_error")

    code = getattr(error, "code", None)
    headers: dict[str, str] = {}
    retry_after = _litellm_retry_after(error)
    if status in RETRY_AFTER_STATUSES and retry_after:
        headers["Retry-After"] = retry_after
    return APIError(status, message, code=code if isinstance(code, str) else "upstream_error", headers=headers)


def _litellm_retry_after(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or getattr(error, "litellm_response_headers", None) or {}
    try:
        return headers.get("retry-after")
    except AttributeError:
        return None


# --- Recording ---


async def _record(call: UpstreamCall, outcome: Outcome, services: Services) -> None:
    await services.sessions.append_turn(_turn(call, outcome))


def _turn(call: UpstreamCall, outcome: Outcome) -> dict[str, Any]:
    turn = build_turn(
        request_id=outcome.response_id or call.request_id,
        partner_id=call.partner.id,
        session_id=call.session_id,
        trainable=not call.partner.anonymous and call.generation_prompt_added,
        model=outcome.model or call.entry.litellm_params.target,
        adapter=None,
        messages=call.messages,
        response_text="".join(outcome.parts),
        finish_reason=outcome.finish_reason or "unknown",
        usage=_usage(outcome.usage),
        created_at=call.started_at,
    )
    if call.continue_final_message:
        turn["continue_final_message"] = True
    # ``model`` is the name the upstream reported, so the model_list entry that served is kept beside it.
    turn["served_model"] = call.entry.model_name
    return turn


def _usage(raw: Any) -> dict[str, int]:
    raw = raw if isinstance(raw, dict) else {}
    prompt_tokens = _count(raw.get("prompt_tokens"))
    completion_tokens = _count(raw.get("completion_tokens"))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": _count(raw.get("total_tokens")) or prompt_tokens + completion_tokens,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _first_choice(choices: Any) -> dict[str, Any]:
    if not isinstance(choices, list):
        return {}
    indexed = [choice for choice in choices if isinstance(choice, dict) and choice.get("index", 0) == 0]
    return indexed[0] if indexed else {}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class RawJSONResponse(JSONResponse):
    """A JSON response whose body is already serialized, so that the upstream's bytes go out unchanged."""

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else super().render(content)
