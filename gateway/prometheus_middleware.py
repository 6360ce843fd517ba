"""ASGI middleware that counts and times every HTTP request, including error responses and streams.

The middleware watches the response messages as they are sent and never buffers a body. It does not parse request
bodies either, so route code passes the requested model with ``note_model``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.prometheus import GatewayMetrics

MODEL_STATE_KEY = "metrics_model"
UNMATCHED_ENDPOINT = "unmatched"
# Endpoints whose responses name what served them in the X-Adapter header.
COMPLETION_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
# A chat chunk's delta content or a legacy completion chunk's text that is a non-empty JSON string. The role
# chunk that opens a chat stream has empty content, so it does not count as the first token.
# NOTE: the prompt that a legacy completion stream echoes (echo=true) matches too, so such requests time the echo.
_GENERATED_TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')
_ERROR_EVENT = b'data: {"error"'


def note_model(request: Request, model: str) -> None:
    """Records the requested model for the request's metrics labels."""
    setattr(request.state, MODEL_STATE_KEY, model)


@dataclass
class _Exchange:
    """The status, headers and stream events observed for one request while its response is sent."""

    started: float
    status: int = 500
    streamed: bool = False
    adapter_header: str | None = None
    first_token_seen: bool = False
    stream_failed: bool = False


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        exchange = _Exchange(started=time.perf_counter())
        scope.setdefault("state", {})

        async def watching_send(message: Message) -> None:
            self._watch(message, exchange, scope)
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            # An exception that escapes here becomes a 500 in the outermost error middleware.
            self._record(scope, exchange)

    def _watch(self, message: Message, exchange: _Exchange, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            exchange.status = int(message["status"])
            headers = dict(message.get("headers") or [])
            exchange.streamed = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            adapter = headers.get(b"x-adapter")
            exchange.adapter_header = adapter.decode("latin-1") if adapter is not None else None
            return
        if message["type"] != "http.response.body" or not exchange.streamed:
            return

        body = message.get("body", b"")
        if not exchange.first_token_seen and _GENERATED_TEXT.search(body):
            exchange.first_token_seen = True
            model = self.metrics.model_label(_model(scope))
            self.metrics.first_token.labels(model=model).observe(time.perf_counter() - exchange.started)
        if not exchange.stream_failed and _ERROR_EVENT in body:
            exchange.stream_failed = True

    def _record(self, scope: Scope, exchange: _Exchange) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or UNMATCHED_ENDPOINT
        requested = _model(scope)
        model = self.metrics.model_label(requested)
        self.metrics.requests.labels(endpoint=endpoint, model=model, status=str(exchange.status)).inc()
        self.metrics.request_duration.labels(endpoint=endpoint, model=model).observe(
            time.perf_counter() - exchange.started
        )
        if exchange.stream_failed:
            self.metrics.stream_errors.labels(endpoint=endpoint, model=model).inc()
        served = endpoint in COMPLETION_ENDPOINTS and 200 <= exchange.status < 300
        if served and exchange.adapter_header is not None:
            self.metrics.observe_served(requested, exchange.adapter_header)


def _model(scope: Scope) -> str | None:
    state = scope.get("state")
    model = state.get(MODEL_STATE_KEY) if isinstance(state, dict) else None
    return model if isinstance(model, str) else None
