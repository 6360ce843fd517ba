"""A closed-loop HTTP/1.1 load generator on raw asyncio connections.

Each of N connections sends the same POST again as soon as the previous response is complete, for a fixed
time, recording each request's latency. It is lighter than an HTTP client library, so more of the machine's
time goes to the servers being measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """Throughput and latency of one load run."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    succeeded_including_warmup: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"host: {parts.hostname}:{parts.port}", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return parts.hostname or "127.0.0.1", parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Reads one response (Content-Length or chunked body) and returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lowered = head.lower()
    marker = lowered.find(b"content-length:")
    if marker >= 0:
        await reader.readexactly(int(lowered[marker + 15 :].split(b"\r\n", 1)[0]))
        return status

    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def _connection(
    host: str, port: int, request: bytes, deadline: float, result: LoadResult, record_from: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (started := time.perf_counter()) < deadline:
            writer.write(request)
            status = await _read_response(reader)
            finished = time.perf_counter()
            if status == 200:
                result.succeeded_including_warmup += 1
            if started < record_from:
                continue
            if status == 200:
                result.requests += 1
                result.latencies_ms.append((finished - started) * 1000)
            else:
                result.errors += 1
    finally:
        writer.close()


async def run_load(
    url: str, body: bytes, *, headers: dict[str, str], connections: int, seconds: float, warmup_s: float = 1.0
) -> LoadResult:
    """Runs ``connections`` closed-loop clients for ``warmup_s + seconds``; only the last ``seconds`` count."""
    host, port, request = build_request(url, body, headers)
    start = time.perf_counter()
    record_from = start + warmup_s
    deadline = record_from + seconds
    result = LoadResult(requests=0, errors=0, seconds=seconds, latencies_ms=[])
    await asyncio.gather(*(_connection(host, port, request, deadline, result, record_from) for _ in range(connections)))
    return result
