"""The token sampler: biases, penalties, seeds and logprobs."""

from __future__ import annotations

import torch

from adapters.decoding import SamplingParams, TokenSampler


def sampler(**overrides: object) -> TokenSampler:
    params = SamplingParams(max_tokens=4, **overrides)  # type: ignore[arg-type]
    return TokenSampler(params, vocab_size=8, device=torch.device("cpu"))


def test_greedy_picks_highest_logit() -> None:
    logits = torch.tensor([0.0, 1.0, 5.0, 2.0, 0.0, 0.0, 0.0, 0.0])

    assert sampler(temperature=0.0).sample(logits)[0] == 2


def test_negative_bias_bans_token() -> None:
    logits = torch.tensor([0.0, 1.0, 5.0, 2.0, 0.0, 0.0, 0.0, 0.0])

    assert sampler(temperature=0.0, logit_bias={2: -100.0}).sample(logits)[0] == 3


def test_frequency_penalty_scales_with_count() -> None:
    token_sampler = sampler(temperature=0.0, frequency_penalty=1.5)
    token_sampler.counts.update([2, 2])
    adjusted = token_sampler._adjusted(torch.zeros(8))

    assert adjusted[2].item() == -3.0
    assert adjusted[3].item() == 0.0


def test_presence_penalty_counts_once() -> None:
    token_sampler = sampler(temperature=0.0, presence_penalty=0.5)
    token_sampler.counts.update([4, 4, 4])

    assert token_sampler._adjusted(torch.zeros(8))[4].item() == -0.5


def draws(seed: int, count: int = 20) -> list[int]:
    token_sampler = sampler(seed=seed)
    return [token_sampler.sample(torch.zeros(8))[0] for _ in range(count)]


def test_same_seed_same_samples() -> None:
    assert draws(11) == draws(11)


def test_different_seeds_differ() -> None:
    assert draws(11) != draws(12)


def test_top_p_keeps_only_nucleus() -> None:
    logits = torch.tensor([10.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    token_sampler = sampler(top_p=0.5, seed=3)
    draws = {token_sampler.sample(logits)[0] for _ in range(20)}

    assert draws == {0}


def test_logprob_of_unbiased_distribution() -> None:
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    _, logprob = sampler(temperature=0.0, logprobs=True, top_logprobs=3, logit_bias={5: 50.0}).sample(logits)

    assert logprob is not None
    assert logprob.token_id == 5
    assert abs(logprob.logprob - torch.log(torch.tensor(1 / 8)).item()) < 1e-5
    assert len(logprob.top) == 3
