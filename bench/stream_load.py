"""Closed-loop streaming chat clients that time every request's first token and the gaps between chunks.

Each client sends its requests back to back, each as a streamed chat completion with usage included, and reads
the server-sent events as they arrive. A request counts as failed when its status is not 200, when the stream
carries an error event, when it ends without a finish reason or ``[DONE]``, or when the connection fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PlannedRequest:
    """One chat request: the partner that sends it and its single user message."""

    partner: str
    prompt: str


@dataclass
class RequestRecord:
    """Timing and outcome of one streamed request. Times are ``time.perf_counter()`` seconds."""

    partner: str
    started: float
    adapter: str | None = None
    first_token_s: float | None = None
    chunk_gaps_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None

    @property
    def adapter_version(self) -> int | None:
        """Returns the version in ``X-Adapter: <partner>/<version>``, or None for ``none`` or a missing header."""
        if self.adapter is None or "/" not in self.adapter:
            return None
        return int(self.adapter.rsplit("/", 1)[1])


@dataclass
class RunResult:
    """All requests of one load run and its wall-clock duration."""

    clients: int
    seconds: float
    records: list[RequestRecord]

    @property
    def succeeded(self) -> list[RequestRecord]:
        return [record for record in self.records if record.error is None]

    @property
    def failed(self) -> int:
        return len(self.records) - len(self.succeeded)

    @property
    def tokens_per_s(self) -> float:
        return sum(record.completion_tokens for record in self.succeeded) / self.seconds

    @property
    def first_token_ms(self) -> list[float]:
        return [record.first_token_s * 1000 for record in self.succeeded if record.first_token_s is not None]

    @property
    def chunk_gaps_ms(self) -> list[float]:
        return [gap * 1000 for record in self.succeeded for gap in record.chunk_gaps_s]


def percentile(values: list[float], fraction: float) -> float:
    """Returns the median for 0.5, else the nearest-rank percentile. With fewer than 100 values, p99 is the maximum."""
    if not values:
        return float("nan")
    if fraction == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(
    session: aiohttp.ClientSession, url: str, model: str, request: PlannedRequest, max_tokens: int
) -> RequestRecord:
    """Sends one streamed chat completion and records its timing. A failed request is recorded, not raised."""
    record = RequestRecord(partner=request.partner, started=time.perf_counter())
    headers = {"X-Partner-ID": request.partner}
    try:
        async with session.post(url, json=chat_body(model, request.prompt, max_tokens), headers=headers) as response:
            record.adapter = response.headers.get("X-Adapter")
            if response.status != 200:
                record.error = f"HTTP {response.status}"
                return record
            await _read_events(response, record)
    except (aiohttp.ClientError, TimeoutError) as error:
        record.error = f"connection failed: {type(error).__name__}"
    except ValueError as error:
        record.error = f"malformed event: {error}"
    return record


async def _read_events(response: aiohttp.ClientResponse, record: RequestRecord) -> None:
    """Reads the event stream into ``record`` and sets ``record.error`` when the stream is incomplete or failed."""
    last_chunk_at: float | None = None
    finished = done = False
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            done = True
            break

        event = json.loads(data)
        if not isinstance(event, dict):
            raise ValueError(f"the event is not a JSON object: {data[:80]!r}")
        if "error" in event:
            record.error = f"error event: {event_error(event['error'])}"
            return
        if event.get("usage"):
            record.completion_tokens = int(event["usage"].get("completion_tokens", 0))
        for choice in event.get("choices") or []:
            finished = finished or choice.get("finish_reason") is not None
            if not (choice.get("delta") or {}).get("content"):
                continue
            arrived = time.perf_counter()
            if last_chunk_at is None:
                record.first_token_s = arrived - record.started
            else:
                record.chunk_gaps_s.append(arrived - last_chunk_at)
            last_chunk_at = arrived

    if not finished:
        record.error = "stream ended without a finish reason"
    elif not done:
        record.error = "stream ended without [DONE]"


def event_error(error: Any) -> str:
    """Returns the code of an OpenAI error object, else its message, else the value itself."""
    if isinstance(error, dict):
        return str(error.get("code") or error.get("message"))
    return str(error)


async def run_clients(url: str, model: str, plans: list[list[PlannedRequest]], max_tokens: int) -> RunResult:
    """Runs one client per plan, each sending its requests back to back, all clients at once."""
    records: list[RequestRecord] = []
    connector = aiohttp.TCPConnector(limit=len(plans))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def client(plan: list[PlannedRequest]) -> None:
        for request in plan:
            records.append(await stream_chat(session, url, model, request, max_tokens))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(plan) for plan in plans))
        seconds = time.perf_counter() - started
    return RunResult(clients=len(plans), seconds=seconds, records=records)
