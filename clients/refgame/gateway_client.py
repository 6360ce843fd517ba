"""The HTTP calls the reference game makes to a running gateway: chat completions, model checks and tokenization."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from clients.retry import RetryPolicy, send_with_retries

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT_S = 300.0


class GatewayError(RuntimeError):
    """The gateway rejected a request or returned a response the game cannot use."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class GatewayUnreachableError(GatewayError):
    """No gateway responded at the base URL."""


class UnknownModelError(GatewayError):
    """The gateway does not serve the requested model (404)."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    adapter: str | None
    completion_tokens: int | None


def _error_from(response: httpx.Response, what: str) -> GatewayError:
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    message = error.get("message") or response.text[:200]
    code = error.get("code")
    if response.status_code == 404 and code == "model_not_found":
        return UnknownModelError(f"{what}: {message}", status_code=404, code=code)
    return GatewayError(
        f"{what} failed with HTTP {response.status_code}: {message}", status_code=response.status_code, code=code
    )


class GatewayClient:
    """Talks to one gateway; ``base_url`` is its OpenAI base URL, ending in ``/v1``."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # vLLM's tokenizer routes live at the server root, beside /v1.
        self.root_url = self.base_url.removesuffix("/v1")
        self.http = httpx.Client(timeout=timeout_s)
        self.retry = retry or RetryPolicy()

    def close(self) -> None:
        self.http.close()

    def _unreachable(self, error: httpx.TransportError) -> GatewayUnreachableError:
        return GatewayUnreachableError(
            f"no gateway responds at {self.base_url} ({type(error).__name__}: {error}); start it with "
            "'convention-gateway serve' or pass --base-url"
        )

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return send_with_retries(self.http, method, url, policy=self.retry, **kwargs)
        except httpx.TransportError as error:
            raise self._unreachable(error) from error

    def _post(self, url: str, body: dict[str, Any], headers: dict[str, str], what: str) -> httpx.Response:
        response = self._send("POST", url, json=body, headers=headers)
        if response.status_code >= 400:
            raise _error_from(response, what)
        return response

    def check_model(self, model: str, partner_id: str) -> None:
        """Raises UnknownModelError when the gateway does not serve ``model`` to ``partner_id``."""
        response = self._send("GET", f"{self.base_url}/models/{model}", headers={"X-Partner-ID": partner_id})
        if response.status_code >= 400:
            raise _error_from(response, f"model {model!r}")

    def chat(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        headers: dict[str, str],
        **sampling: Any,
    ) -> ChatReply:
        """Sends one chat completion and returns the first choice's text and the adapter that served it."""
        body = {"model": model, "messages": messages, **{k: v for k, v in sampling.items() if v is not None}}
        response = self._post(f"{self.base_url}/chat/completions", body, headers, f"chat completion with {model!r}")
        payload = response.json()
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise GatewayError(f"chat completion with {model!r} returned no message: {payload!r:.200}") from error
        usage = payload.get("usage") or {}
        return ChatReply(
            text=text, adapter=response.headers.get("X-Adapter"), completion_tokens=usage.get("completion_tokens")
        )

    def tokenize(self, model: str, text: str, partner_id: str | None = None) -> list[int] | None:
        """Returns the token ids of ``text`` without special tokens, or None when ``model`` is not the local model."""
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        try:
            headers = {"X-Partner-ID": partner_id} if partner_id else {}
            response = self._post(f"{self.root_url}/tokenize", body, headers, f"tokenizing for {model!r}")
        except GatewayError as error:
            if error.code == "unsupported_model":
                return None
            raise
        return [int(token) for token in response.json()["tokens"]]

    def detokenize(self, model: str, tokens: list[int], partner_id: str | None = None) -> str:
        body = {"model": model, "tokens": tokens}
        headers = {"X-Partner-ID": partner_id} if partner_id else {}
        response = self._post(f"{self.root_url}/detokenize", body, headers, f"detokenizing for {model!r}")
        return str(response.json()["prompt"])


class GatewayTokenizer:
    """The served model's tokenizer reached over /tokenize and /detokenize, with results cached per game run."""

    def __init__(self, client: GatewayClient, model: str, partner_id: str | None = None) -> None:
        self.client = client
        self.model = model
        self.partner_id = partner_id
        self._encoded: dict[str, list[int]] = {}
        self._decoded: dict[tuple[int, ...], str] = {}

    def encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            self._encoded[text] = self.client.tokenize(self.model, text, self.partner_id) or []
        return self._encoded[text]

    def decode(self, ids: list[int]) -> str:
        key = tuple(ids)
        if key not in self._decoded:
            self._decoded[key] = self.client.detokenize(self.model, ids, self.partner_id)
        return self._decoded[key]
