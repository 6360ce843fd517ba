"""Forwarding chat completions to upstream providers (OpenAI-compatible servers directly, others via litellm)."""

from __future__ import annotations

from fastapi.responses import JSONResponse, StreamingResponse

from adapters.settings import ModelEntry
from gateway.errors import APIError
from gateway.partners import Partner
from gateway.schemas import ChatCompletionRequest
from gateway.services import Services


async def serve_upstream_chat(
    body: ChatCompletionRequest, entry: ModelEntry, partner: Partner, session_header: str | None, services: Services
) -> JSONResponse | StreamingResponse:
    """Serves a chat completion from the entry's upstream backend and records the turn."""
    # TODO: replaced by the upstream implementation.
    raise APIError(501, f"upstream backend {entry.litellm_params.model!r} is not built yet", param="model")
