"""The legacy ``POST /v1/completions`` endpoint on the local engine."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import redis
from fastapi.responses import JSONResponse, StreamingResponse

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
from gateway.chat import (
    SSE_DONE,
    STORE_DOWN_EVENT_MESSAGE,
    adapter_header,
    check_capacity,
    engine_errors_to_api,
    sse,
    stream_failure_event,
    usage,
)
from gateway.errors import APIError, error_body
from gateway.logprobs import legacy_logprobs
from gateway.partners import Partner
from gateway.routing import Route
from gateway.sampling import choice_seed, resolve_max_tokens, sampling_params
from gateway.schemas import CompletionRequest
from gateway.services import Services
from gateway.sessions import build_turn, new_session_id

logger = logging.getLogger(__name__)


@dataclass
class CompletionContext:
    """A legacy completion request, with one prompt per entry of ``prompts``."""

    request_id: str
    partner: Partner
    model: str
    prompts: list[str]
    prompt_ids: list[list[int]]
    params: list[SamplingParams]
    choices_per_prompt: int
    echo: bool
    adapter: AdapterVersion | None
    created: int
    started_at: float

    @property
    def adapter_header(self) -> str:
        return adapter_header(self.adapter)

    def jobs(self) -> list[tuple[int, int, SamplingParams]]:
        """Returns (choice index, prompt index, sampling params) for every choice, in OpenAI's order."""
        jobs = []
        for prompt_index, params in enumerate(self.params):
            for sample in range(self.choices_per_prompt):
                index = prompt_index * self.choices_per_prompt + sample
                jobs.append((index, prompt_index, replace(params, seed=choice_seed(params.seed, sample))))
        return jobs


def _check_request(body: CompletionRequest) -> None:
    if body.suffix:
        raise APIError(
            400, "'suffix' is not supported by the local engine", param="suffix", code="unsupported_parameter"
        )
    if body.best_of not in (None, 1, body.n):
        raise APIError(400, "best_of other than n is not supported", param="best_of", code="unsupported_parameter")
    if isinstance(body.prompt, list) and not body.prompt:
        raise APIError(400, "prompt must not be an empty list", param="prompt", code="invalid_value")


def _prompts(body: CompletionRequest, engine: LocalEngine) -> tuple[list[str], list[list[int]]]:
    """Returns the prompts as text and token ids; a prompt may be text, token ids, or a list of either."""
    raw = body.prompt
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif all(isinstance(item, int) for item in raw):
        items = [list(raw)]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]

    texts, ids = [], []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            ids.append(engine.text_prompt_ids(item))
        else:
            if not item:
                raise APIError(
                    400, "a prompt given as token ids must not be empty", param="prompt", code="invalid_value"
                )
            if any(not 0 <= token < engine.vocab_size for token in item):
                raise APIError(400, f"prompt token ids must be in 0..{engine.vocab_size - 1}", param="prompt")
            texts.append(str(engine.tokenizer.decode(item)))
            ids.append(list(item))
    return texts, ids


def prepare(body: CompletionRequest, route: Route, partner: Partner, services: Services) -> CompletionContext:
    _check_request(body)
    engine = services.local_engine()
    check_capacity(engine)

    texts, prompt_ids = _prompts(body, engine)
    params = [
        sampling_params(
            max_tokens=resolve_max_tokens(
                body.max_tokens, services.settings.default_max_tokens, len(ids), engine, "max_tokens"
            ),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_sequences(),
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.logit_bias,
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs or 0,
            vocab_size=engine.vocab_size,
        )
        for ids in prompt_ids
    ]
    return CompletionContext(
        request_id=f"cmpl-{secrets.token_hex(12)}",
        partner=partner,
        model=body.model,
        prompts=texts,
        prompt_ids=prompt_ids,
        params=params,
        choices_per_prompt=body.n,
        echo=body.echo,
        adapter=route.adapter,
        created=int(time.time()),
        started_at=time.time(),
    )


def _headers(context: CompletionContext) -> dict[str, str]:
    return {"X-Adapter": context.adapter_header, "X-Request-ID": context.request_id}


def _choice(
    context: CompletionContext,
    index: int,
    prompt_index: int,
    text: str,
    engine: LocalEngine,
    output: GenerationOutput | None,
    delta: TextDelta | None = None,
) -> dict[str, Any]:
    prefix = context.prompts[prompt_index] if context.echo and delta is None else ""
    logprobs = None
    if context.params[prompt_index].logprobs:
        if delta is not None:
            items = delta.logprobs
        elif output is not None and output.logprobs is not None:
            items = output.logprobs
        else:
            items = []
        logprobs = legacy_logprobs(items, engine.token_text, text_offset=len(prefix))
    return {
        "index": index,
        "text": prefix + text,
        "logprobs": logprobs,
        "finish_reason": output.finish_reason if output is not None and delta is None else None,
    }


async def complete(context: CompletionContext, services: Services) -> JSONResponse:
    engine = services.local_engine()
    outputs: list[GenerationOutput] = []
    choices = []
    for index, prompt_index, params in context.jobs():
        try:
            output = await engine.generate(context.prompt_ids[prompt_index], params, context.adapter)
        except (ContextLengthError, EngineNotReadyError, EngineOverloadedError) as error:
            raise engine_errors_to_api(error) from error
        outputs.append(output)
        choices.append(_choice(context, index, prompt_index, output.text, engine, output))

    await _record(context, outputs, services)
    body = {
        "id": context.request_id,
        "object": "text_completion",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": choices,
        "usage": _usage(context, outputs),
    }
    return JSONResponse(body, headers=_headers(context))


def stream(context: CompletionContext, services: Services, *, include_usage: bool) -> StreamingResponse:
    return StreamingResponse(
        _stream_events(context, services, include_usage=include_usage),
        media_type="text/event-stream",
        headers={**_headers(context), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream_events(context: CompletionContext, services: Services, *, include_usage: bool) -> AsyncIterator[str]:
    engine = services.local_engine()
    outputs: list[GenerationOutput] = []
    for index, prompt_index, params in context.jobs():
        if context.echo:
            yield sse(
                _chunk(
                    context,
                    {"index": index, "text": context.prompts[prompt_index], "logprobs": None, "finish_reason": None},
                    include_usage,
                )
            )
        try:
            async for item in engine.stream(context.prompt_ids[prompt_index], params, context.adapter):
                if isinstance(item, TextDelta):
                    choice = _choice(context, index, prompt_index, item.text, engine, None, item)
                    yield sse(_chunk(context, choice, include_usage))
                else:
                    outputs.append(item)
        except Exception as error:
            yield stream_failure_event(context.request_id, context.partner.id, error)
            yield SSE_DONE
            return
        final = {"index": index, "text": "", "logprobs": None, "finish_reason": outputs[-1].finish_reason}
        yield sse(_chunk(context, final, include_usage))

    try:
        await _record(context, outputs, services)
    except redis.RedisError as error:
        logger.error("Request %s (partner %s): turn not stored: %s", context.request_id, context.partner.id, error)
        yield sse(error_body(503, STORE_DOWN_EVENT_MESSAGE, code="store_unavailable"))
    if include_usage:
        yield sse({**_chunk(context, None, include_usage), "choices": [], "usage": _usage(context, outputs)})
    yield SSE_DONE


def _chunk(context: CompletionContext, choice: dict[str, Any] | None, include_usage: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": context.request_id,
        "object": "text_completion",
        "created": context.created,
        "model": context.model,
        "system_fingerprint": context.adapter_header,
        "choices": [choice] if choice is not None else [],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def _usage(context: CompletionContext, outputs: list[GenerationOutput]) -> dict[str, int]:
    """Returns usage with each prompt counted once, whatever the number of choices per prompt."""
    prompt_tokens = sum(len(ids) for ids in context.prompt_ids)
    completion_tokens = usage(outputs)["completion_tokens"]
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _record(context: CompletionContext, outputs: list[GenerationOutput], services: Services) -> None:
    """Stores one turn per prompt (its first choice), each as a one-message session of kind 'completion'."""
    for prompt_index, text in enumerate(context.prompts):
        output = outputs[prompt_index * context.choices_per_prompt]
        turn = build_turn(
            request_id=context.request_id,
            partner_id=context.partner.id,
            session_id=new_session_id(),
            trainable=not context.partner.anonymous,
            model=context.model,
            adapter=context.adapter.name if context.adapter is not None else None,
            messages=[{"role": "user", "content": text}],
            response_text=output.text,
            finish_reason=output.finish_reason,
            usage=usage([output]),
            created_at=context.started_at,
        )
        turn["kind"] = "completion"
        await services.sessions.append_turn(turn)
