"""Turning OpenAI request fields into the local engine's sampling parameters, with checks that name the field."""

from __future__ import annotations

from adapters.decoding import SamplingParams
from adapters.engine import LocalEngine
from gateway.errors import APIError

MAX_LOGIT_BIAS = 100.0


def parse_logit_bias(logit_bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """Returns the bias per token id; keys must be token ids of the served model's tokenizer."""
    if not logit_bias:
        return {}

    parsed: dict[int, float] = {}
    for key, bias in logit_bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(
                400,
                f"invalid logit_bias key {key!r}: keys are token ids from 0 to {vocab_size - 1}",
                param="logit_bias",
                code="invalid_value",
            )
        if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise APIError(400, f"invalid logit_bias value {bias} for token {key}: use -100 to 100", param="logit_bias")
        parsed[int(key)] = float(bias)
    return parsed


def resolve_max_tokens(requested: int | None, default: int, prompt_tokens: int, engine: LocalEngine, param: str) -> int:
    """Returns the completion budget: the requested one, which must fit, or the default clipped to the room left."""
    room = engine.context_length - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.context_length} tokens, but the prompt has "
            f"{prompt_tokens} tokens; shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(default, room)

    if requested > room:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.context_length} tokens, but the request needs "
            f"{prompt_tokens} prompt tokens plus {requested} completion tokens; shorten the messages or lower {param}",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def sampling_params(
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    stop: tuple[str, ...],
    seed: int | None,
    presence_penalty: float,
    frequency_penalty: float,
    logit_bias: dict[str, float] | None,
    logprobs: bool,
    top_logprobs: int,
    vocab_size: int,
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logit_bias=parse_logit_bias(logit_bias, vocab_size),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def choice_seed(seed: int | None, index: int) -> int | None:
    """Returns the seed of choice ``index``: choices of one seeded request differ, and repeat across requests."""
    return None if seed is None else seed + index
