"""A fake OpenAI-compatible upstream for the gateway's upstream tests, served by uvicorn on a background thread.

It serves ``POST /v1/chat/completions`` with a deterministic echo of the last user message, streamed or not, and
records every request it receives. It also fails on demand, because each call to ``fail_next`` queues one failure
for one of the next requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPORTED_MODEL = "upstream-model-v1-0125"
CREATED = 1_700_000_000
FINGERPRINT = "fp_fake_upstream"

Failure = Literal[
    "rate_limit", "server_error", "bad_request", "unauthorized", "unavailable", "hang", "disconnect", "stream_break"
]


@dataclass
class ReceivedRequest:
    """One request as the fake received it."""

    headers: dict[str, str]
    body: dict[str, Any]


def reply_for(messages: list[dict[str, Any]]) -> str:
    """Returns the fake's reply, which echoes the last user message's text."""
    user_texts = [message.get("content") for message in messages if message.get("role") == "user"]
    last = user_texts[-1] if user_texts else ""
    if isinstance(last, list):
        last = " ".join(part.get("text", "") for part in last if isinstance(part, dict))
    return f"Echo: {last}"


def usage_for(messages: list[dict[str, Any]], reply: str) -> dict[str, int]:
    """Counts whitespace-separated words as tokens, so that tests can predict the usage."""
    prompt_tokens = sum(len(str(message.get("content") or "").split()) for message in messages)
    completion_tokens = len(reply.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_payload(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class FakeUpstream:
    """An OpenAI-compatible server on a free 127.0.0.1 port, whose ``base_url`` ends with ``/v1``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.requests: list[ReceivedRequest] = []
        self.failures: deque[Failure] = deque()
        self.retry_after = "7"
        self.hang_s = 3.0
        self.chunk_delay_s = 0.0
        self._ids = itertools.count(1)
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat_completions, methods=["POST"])])
        # The disconnect failures end responses on purpose, and uvicorn logs each as an error.
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="critical", timeout_graceful_shutdown=1, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> FakeUpstream:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the fake upstream did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def reset(self) -> None:
        """Forgets received requests and queued failures and restores the default timings."""
        self.requests.clear()
        self.failures.clear()
        self.retry_after = "7"
        self.hang_s = 3.0
        self.chunk_delay_s = 0.0

    def fail_next(self, *failures: Failure) -> None:
        """Queues failures, which the next requests use, one failure per request, in order."""
        self.failures.extend(failures)

    async def _chat_completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(ReceivedRequest(headers=dict(request.headers), body=body))
        failure = self.failures.popleft() if self.failures else None
        if failure == "hang":
            await asyncio.sleep(self.hang_s)
        elif failure == "disconnect":
            return _DisconnectingResponse()
        elif failure is not None and failure != "stream_break":
            return self._failure_response(failure)

        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if body.get("stream"):
            events = self._stream_events(completion_id, body, breaks=failure == "stream_break")
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(self._completion(completion_id, body))

    def _failure_response(self, failure: Failure) -> JSONResponse:
        if failure == "rate_limit":
            payload = error_payload("Rate limit reached for requests", "requests", code="rate_limit_exceeded")
            return JSONResponse(payload, status_code=429, headers={"Retry-After": self.retry_after})
        if failure == "unavailable":
            payload = error_payload("The server is overloaded", "server_error", code="overloaded")
            return JSONResponse(payload, status_code=503, headers={"Retry-After": self.retry_after})
        if failure == "bad_request":
            payload = error_payload(
                "Invalid value for 'temperature': must be at most 2.",
                "invalid_request_error",
                param="temperature",
                code="invalid_value",
            )
            return JSONResponse(payload, status_code=400)
        if failure == "unauthorized":
            payload = error_payload("Incorrect API key provided", "invalid_request_error", code="invalid_api_key")
            return JSONResponse(payload, status_code=401)
        return JSONResponse(error_payload("The server had an error", "server_error"), status_code=500)

    def _completion(self, completion_id: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages", [])
        reply = reply_for(messages)
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply if index == 0 else f"{reply} ({index})"},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for index in range(int(body.get("n") or 1))
        ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": REPORTED_MODEL,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": usage_for(messages, reply),
        }

    async def _stream_events(self, completion_id: str, body: dict[str, Any], *, breaks: bool) -> AsyncIterator[str]:
        messages = body.get("messages", [])
        reply = reply_for(messages)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        words = reply.split(" ")
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": word if index == 0 else f" {word}"} for index, word in enumerate(words)]

        for index, delta in enumerate(deltas):
            if breaks and index == 2:
                raise ConnectionResetError("the fake upstream breaks the stream on purpose")
            yield _sse(self._chunk(completion_id, [_choice(delta, None)], include_usage))
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        yield _sse(self._chunk(completion_id, [_choice({}, "stop")], include_usage))
        if include_usage:
            yield _sse({**self._chunk(completion_id, [], include_usage), "usage": usage_for(messages, reply)})
        yield "data: [DONE]\n\n"

    def _chunk(self, completion_id: str, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": REPORTED_MODEL,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = None
        return chunk


class _DisconnectingResponse(Response):
    """Sends the status line and part of the body, then returns, so that uvicorn closes the connection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-cut', "more_body": True})


def _choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
