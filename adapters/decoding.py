"""Token-by-token decoding with OpenAI's sampling parameters, on a KV cache.

Owning the loop (instead of ``model.generate``) gives exact control over what OpenAI clients expect: logprobs
of the unmodified distribution, ``logit_bias``, presence and frequency penalties, a per-request random
generator for ``seed``, stop checks after every token and cancellation between tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_TOP_LOGPROBS = 20
# Below this temperature, dividing the logits overflows to inf; sampling that cold is greedy decoding anyway.
MIN_SAMPLING_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings in OpenAI's terms."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class TokenLogprob:
    """The log probability of one sampled token and of the most likely alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenSampler:
    """Turns one step's logits into the next token, applying the request's biases, penalties and sampling."""

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device) -> None:
        self.params = params
        self.counts: Counter[int] = Counter()
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            # manual_seed takes 0 to 2**64 - 1, and choice seeds (seed + index) may leave the signed 64-bit range.
            self.generator.manual_seed(params.seed % 2**64)
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size, device=device)
            ids = torch.tensor(list(params.logit_bias), device=device)
            self.bias[ids] = torch.tensor(list(params.logit_bias.values()), device=device)

    def sample(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Returns the next token id and, when requested, its logprob under the unmodified distribution."""
        scores = self._adjusted(logits.float())
        if self.params.temperature < MIN_SAMPLING_TEMPERATURE:
            token = int(torch.argmax(scores))
        else:
            token = self._draw(scores / self.params.temperature)

        self.counts[token] += 1
        return token, self._logprob(logits, token) if self.params.logprobs else None

    def _adjusted(self, scores: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            scores = scores + self.bias
        if self.counts and (self.params.presence_penalty or self.params.frequency_penalty):
            ids = torch.tensor(list(self.counts), device=scores.device)
            occurrences = torch.tensor(list(self.counts.values()), dtype=scores.dtype, device=scores.device)
            penalty = self.params.frequency_penalty * occurrences + self.params.presence_penalty
            scores = scores.clone()
            scores[ids] -= penalty
        return scores

    def _draw(self, scores: torch.Tensor) -> int:
        probabilities = torch.softmax(scores, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probabilities, order = torch.sort(probabilities, descending=True)
            outside = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities > self.params.top_p
            sorted_probabilities[outside] = 0.0
            probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_probabilities)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if self.params.top_logprobs:
            values, ids = torch.topk(logprobs, self.params.top_logprobs)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(token_id=token, logprob=float(logprobs[token]), top=top)


@torch.inference_mode()
def decode(
    model: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    eos_token_ids: set[int],
    on_token: Callable[[int, TokenLogprob | None], bool],
) -> tuple[list[int], bool]:
    """Generates up to ``params.max_tokens`` tokens after ``prompt_ids``.

    ``on_token`` is called after every token and returns False to stop (a stop string, a cancelled request).
    Returns the generated ids, end-of-sequence token excluded, and whether generation ended on its own
    (end of sequence or ``on_token``) rather than by reaching ``max_tokens``.
    """
    if not prompt_ids:
        raise ValueError("decoding needs at least one prompt token")
    device = next(model.parameters()).device
    sampler = TokenSampler(params, model.config.vocab_size, device)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    cache = None
    generated: list[int] = []

    for _ in range(params.max_tokens):
        output = model(input_ids=input_ids, cache=cache, use_cache=True)
        cache = output.cache
        token, logprob = sampler.sample(output.logits[0, -1])
        if token in eos_token_ids:
            return generated, True

        generated.append(token)
        if not on_token(token, logprob):
            return generated, True
        input_ids = torch.tensor([[token]], dtype=torch.long, device=device)
    return generated, False
