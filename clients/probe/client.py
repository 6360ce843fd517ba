"""The probe's HTTP calls to a running gateway: forced-prefix chat completions and model checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from clients.probe.config import ModelSpec
from clients.retry import RetryPolicy, send_with_retries

logger = logging.getLogger(__name__)


class ProbeGatewayError(RuntimeError):
    """The gateway rejected a probe request or returned something the probe cannot use."""


class GatewayUnreachableError(ProbeGatewayError):
    """No gateway accepted a connection at the base URL."""


class UnknownModelError(ProbeGatewayError):
    """The gateway does not serve the requested model."""


@dataclass(frozen=True)
class Continuation:
    """The text that continues a forced prefix, and the adapter that served it (``X-Adapter``)."""

    text: str
    adapter: str | None
    finish_reason: str | None


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    return str(error.get("message") or response.text[:200]), error.get("code")


class ProbeClient:
    """A client of one gateway. ``base_url`` is its OpenAI base URL, ending in ``/v1``."""

    def __init__(self, base_url: str, *, partner_id: str, timeout_s: float, retry: RetryPolicy | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.partner_id = partner_id
        self.http = httpx.Client(timeout=timeout_s)
        self.retry = retry or RetryPolicy()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            return send_with_retries(self.http, method, url, policy=self.retry, **kwargs)
        except httpx.TransportError as error:
            raise GatewayUnreachableError(
                f"cannot connect to the gateway at {self.base_url} ({type(error).__name__}: {error}); start it with "
                "'convention-gateway serve' or pass --base-url"
            ) from error

    def check_model(self, spec: ModelSpec) -> None:
        """Raises UnknownModelError unless the gateway lists the model (its own or the partner's adapter ids)."""
        response = self._request("GET", f"/models/{spec.model}", headers={"X-Partner-ID": self.partner_id})
        if response.status_code == 404:
            message, _ = _error_message(response)
            raise UnknownModelError(f"model {spec.model!r} (label {spec.label!r}) is not served: {message}")
        if response.status_code >= 400:
            message, _ = _error_message(response)
            raise ProbeGatewayError(f"checking model {spec.model!r} failed with HTTP {response.status_code}: {message}")

    def continue_reply(
        self, spec: ModelSpec, messages: list[dict[str, str]], prefix: str, *, max_tokens: int
    ) -> Continuation:
        """Completes the assistant reply that starts with ``prefix``, greedily."""
        body = {
            "model": spec.model,
            "messages": [*messages, {"role": "assistant", "content": prefix}],
            "continue_final_message": True,
            "add_generation_prompt": False,
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        headers = {"X-Partner-ID": self.partner_id}
        if spec.bare:
            headers["X-Adapter"] = "none"

        response = self._request("POST", "/chat/completions", json=body, headers=headers)
        if response.status_code >= 400:
            message, code = _error_message(response)
            if response.status_code == 404 and code == "model_not_found":
                raise UnknownModelError(f"model {spec.model!r} (label {spec.label!r}) is not served: {message}")
            status = response.status_code
            raise ProbeGatewayError(f"chat completion for {spec.label!r} failed with HTTP {status}: {message}")

        choice = response.json()["choices"][0]
        return Continuation(
            text=choice["message"]["content"] or "",
            adapter=response.headers.get("X-Adapter"),
            finish_reason=choice.get("finish_reason"),
        )
