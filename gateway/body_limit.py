"""ASGI middleware that rejects request bodies above a size limit with a 413 in the OpenAI error envelope.

Parsing and tokenizing a body of many megabytes blocks the server for seconds, so bodies are counted before any
route sees them. Routes that stream large uploads and enforce their own limit are exempt.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body

logger = logging.getLogger(__name__)


class BodySizeLimitMiddleware:
    """Buffers each request body up to ``max_bytes`` and responds with 413 when it is larger."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_suffixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_suffixes = exempt_suffixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(self.exempt_suffixes):
            await self.app(scope, receive, send)
            return

        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, send)
            return

        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._reject(scope, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        logger.warning(
            "Request %s %s: body larger than %d bytes, rejected", scope["method"], scope["path"], self.max_bytes
        )
        message = (
            f"the request body is larger than {self.max_bytes} bytes; send a shorter request or raise "
            "max_request_body_bytes in the gateway's configuration"
        )
        payload = json.dumps(error_body(413, message, code="request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
