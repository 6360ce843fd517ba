"""Counting the partner's new message tokens of a turn, the measure of how briefly the partner writes.

A turn's request carries the whole conversation when the client resends it, so only the user messages after the
last assistant message are the partner's new text. They are counted with the local model's tokenizer when one is
loaded, otherwise in whitespace-separated words, and the unit is stored beside the count.

NOTE: litellm's ``token_counter`` is not used for upstream turns. In litellm 1.110.2 it fetches tokenizer files
from huggingface.co for some model names. For ``hosted_vllm/meta-llama/Llama-3-8B`` it retried for 23 s with
the network blocked before it fell back to tiktoken. It also needs the litellm import, which the pass-through
path avoids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from adapters.engine import LocalEngine
from gateway.sessions import history_prefix

logger = logging.getLogger(__name__)

TOKENS = "tokens"
WORDS = "words"
# Longer new text is tokenized in a worker thread, so that it does not hold up other requests on the event loop.
# The default model's tokenizer (``encode`` on a 2-core machine) took 68 us for 79 characters and 2.8 ms for
# 3,950, so text up to this length costs an estimated 0.7 ms inline.
INLINE_MAX_CHARS = 1000

# Returns (count, unit) for the texts of the partner's new messages.
PartnerTokenCounter = Callable[[list[str]], tuple[int, str]]


def new_partner_texts(turn: dict[str, Any]) -> list[str]:
    """Returns the contents of the user messages that the turn's request added after the stored history."""
    messages = list(turn.get("messages") or [])
    if turn.get("continue_final_message") and messages:
        # The final message is the partial assistant reply being continued, not a message of the partner.
        messages = messages[:-1]
    new_messages = messages[len(history_prefix(messages)) :]
    return [str(message.get("content") or "") for message in new_messages if message.get("role") == "user"]


def count_words(texts: list[str]) -> tuple[int, str]:
    return sum(len(text.split()) for text in texts), WORDS


def engine_counter(engine: LocalEngine | None) -> PartnerTokenCounter:
    """Returns a counter that uses the engine's tokenizer once the model is loaded, and words before that."""

    def count(texts: list[str]) -> tuple[int, str]:
        if engine is None or not engine.ready:
            return count_words(texts)
        tokenizer = engine.tokenizer
        return sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in texts), TOKENS

    return count


def partner_token_fields(turn: dict[str, Any], counter: PartnerTokenCounter) -> dict[str, Any]:
    """Returns the turn's ``partner_tokens`` and ``partner_tokens_unit``, the stored ones when present."""
    if isinstance(turn.get("partner_tokens"), int) and turn.get("partner_tokens_unit") in (TOKENS, WORDS):
        return {"partner_tokens": turn["partner_tokens"], "partner_tokens_unit": turn["partner_tokens_unit"]}
    count, unit = counter(new_partner_texts(turn))
    return {"partner_tokens": count, "partner_tokens_unit": unit}


async def add_partner_tokens(turn: dict[str, Any], counter: PartnerTokenCounter) -> None:
    """Sets the turn's partner token fields; a turn that already has them, such as a retried write, keeps them."""
    if "partner_tokens" in turn:
        return

    texts = new_partner_texts(turn)
    if sum(len(text) for text in texts) > INLINE_MAX_CHARS:
        count, unit = await asyncio.to_thread(counter, texts)
    else:
        count, unit = counter(texts)
    turn["partner_tokens"], turn["partner_tokens_unit"] = count, unit
