"""Iteration-level batching: joined sequences decode exactly as they would alone, and leave independently."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base_model import load_model_and_tokenizer
from adapters.batching import BatchScheduler, SequenceRequest, no_adapters
from adapters.decoding import SamplingParams, decode

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3,",
    "A long list of fruit: apple, pear, plum, cherry, grape, melon, lemon, lime, orange, peach, and",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path: str) -> tuple[Any, Any]:
    return load_model_and_tokenizer(tiny_model_path)


@pytest.fixture()
def scheduler(model_and_tokenizer: tuple[Any, Any]) -> Iterator[BatchScheduler]:
    model, _ = model_and_tokenizer
    running = BatchScheduler(model, eos_token_ids=set(), select_rows=no_adapters, max_batch_size=8)
    yield running
    running.stop()


class Outcome:
    """Collects one sequence's tokens and its end."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.tokens: list[int] = []
        self.generated: list[int] | None = None
        self.ended: bool | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stop_after = stop_after

    def on_token(self, token: int, _: Any) -> bool:
        self.tokens.append(token)
        return self.stop_after is None or len(self.tokens) < self.stop_after

    def on_done(self, generated: list[int], ended: bool, error: BaseException | None) -> None:
        self.generated, self.ended, self.error = generated, ended, error
        self.done.set()


def request(tokenizer: Any, prompt: str, outcome: Outcome, max_tokens: int = 12, **extra: Any) -> SequenceRequest:
    return SequenceRequest(
        prompt_ids=tokenizer(prompt)["input_ids"],
        params=SamplingParams(max_tokens=max_tokens, temperature=0),
        adapter=None,
        on_token=outcome.on_token,
        on_done=outcome.on_done,
        **extra,
    )


def alone(model: Any, tokenizer: Any, prompt: str, max_tokens: int = 12) -> list[int]:
    generated, _ = decode(
        model,
        tokenizer(prompt)["input_ids"],
        SamplingParams(max_tokens=max_tokens, temperature=0),
        eos_token_ids=set(),
        on_token=lambda *_: True,
    )
    return generated


def test_joined_sequences_match_alone(model_and_tokenizer: tuple[Any, Any], scheduler: BatchScheduler) -> None:
    model, tokenizer = model_and_tokenizer
    expected = [alone(model, tokenizer, prompt) for prompt in PROMPTS]
    outcomes = [Outcome() for _ in PROMPTS]

    scheduler.submit(request(tokenizer, PROMPTS[0], outcomes[0]))
    scheduler.submit(request(tokenizer, PROMPTS[1], outcomes[1]))
    while len(outcomes[0].tokens) < 3:
        time.sleep(0.001)
    scheduler.submit(request(tokenizer, PROMPTS[2], outcomes[2]))
    scheduler.submit(request(tokenizer, PROMPTS[3], outcomes[3], max_tokens=5))
    for outcome in outcomes:
        assert outcome.done.wait(60)

    assert outcomes[0].generated == expected[0]
    assert outcomes[1].generated == expected[1]
    assert outcomes[2].generated == expected[2]
    assert outcomes[3].generated == expected[3][:5]
    assert [outcome.ended for outcome in outcomes] == [False, False, False, False]


def test_stopped_sequence_leaves_others_continue(
    model_and_tokenizer: tuple[Any, Any], scheduler: BatchScheduler
) -> None:
    model, tokenizer = model_and_tokenizer
    short, full = Outcome(stop_after=2), Outcome()

    scheduler.submit(request(tokenizer, PROMPTS[0], short))
    scheduler.submit(request(tokenizer, PROMPTS[1], full))

    assert short.done.wait(60)
    assert full.done.wait(60)
    assert short.generated == alone(model, tokenizer, PROMPTS[0])[:2]
    assert short.ended is True
    assert full.generated == alone(model, tokenizer, PROMPTS[1])


def test_cancelled_sequence_ends_early(model_and_tokenizer: tuple[Any, Any], scheduler: BatchScheduler) -> None:
    _, tokenizer = model_and_tokenizer
    cancel = threading.Event()
    cancelled, other = Outcome(), Outcome()

    scheduler.submit(request(tokenizer, PROMPTS[1], cancelled, max_tokens=400, cancel=cancel))
    scheduler.submit(request(tokenizer, PROMPTS[2], other, max_tokens=400))
    while len(cancelled.tokens) < 2:
        time.sleep(0.001)
    cancel.set()

    assert cancelled.done.wait(60)
    assert cancelled.ended is True
    assert len(cancelled.generated or []) < 400
    assert other.done.wait(120)
    assert len(other.generated or []) == 400


def test_failing_callback_fails_only_its_batch(model_and_tokenizer: tuple[Any, Any], scheduler: BatchScheduler) -> None:
    _, tokenizer = model_and_tokenizer
    broken = Outcome()

    def explode(token: int, _: Any) -> bool:
        raise ValueError("callback failed")

    scheduler.submit(
        SequenceRequest(
            prompt_ids=tokenizer(PROMPTS[0])["input_ids"],
            params=SamplingParams(max_tokens=4, temperature=0),
            adapter=None,
            on_token=explode,
            on_done=broken.on_done,
        )
    )
    later = Outcome()
    assert broken.done.wait(60)
    scheduler.submit(request(tokenizer, PROMPTS[2], later, max_tokens=3))

    assert isinstance(broken.error, ValueError)
    assert later.done.wait(60)
    assert later.error is None
    assert len(later.generated or []) == 3
