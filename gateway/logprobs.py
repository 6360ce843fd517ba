"""OpenAI's two logprobs shapes: the chat ``content`` list and the legacy completions columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adapters.decoding import TokenLogprob

TokenText = Callable[[int], str]


def _entry(token_text: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    text = token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(logprobs: Sequence[TokenLogprob], token_text: TokenText) -> dict[str, Any]:
    """Returns ``choices[i].logprobs`` of a chat completion (or of one streamed chunk)."""
    content = []
    for item in logprobs:
        entry = _entry(token_text, item.token_id, item.logprob)
        entry["top_logprobs"] = [_entry(token_text, token_id, value) for token_id, value in item.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def legacy_logprobs(logprobs: Sequence[TokenLogprob], token_text: TokenText, text_offset: int = 0) -> dict[str, Any]:
    """Returns ``choices[i].logprobs`` of a legacy completion: parallel lists per token."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = text_offset
    for item in logprobs:
        text = token_text(item.token_id)
        tokens.append(text)
        token_logprobs.append(item.logprob)
        top_logprobs.append({token_text(token_id): value for token_id, value in item.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}
