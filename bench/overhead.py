"""Overhead of the gateway's upstream path: one load sent directly, through the gateway and through litellm's proxy.

All three targets run on this machine in one run, in front of one instant fake upstream, so the figures are
comparable. On a noisy machine the ratios matter more than the absolute numbers. Each measurement is repeated and
the median is reported.

    make bench-overhead        # or: .venv/bin/python -m bench.overhead --seconds 5 --repeats 3

litellm's proxy runs from its own environment, bench/.venv-litellm-proxy (``make bench-env`` creates it);
without it the proxy is left out and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import yaml

from bench.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parent.parent
PROXY_BIN = ROOT / "bench" / ".venv-litellm-proxy" / "bin" / "litellm"
SERVED_MODEL = "bench-upstream"
PROXY_MASTER_KEY = "sk-bench-master-key"
REQUEST = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 4}


@dataclass
class Target:
    """One way of reaching the fake upstream."""

    name: str
    url: str
    headers: dict[str, str]
    model: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not respond within {timeout_s:.0f} s")


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        child = subprocess.Popen(command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def gateway_config(folder: Path, upstream: str, prefix: str) -> Path:
    config = {
        "key_prefix": prefix,
        "model_list": [
            {
                "model_name": SERVED_MODEL,
                "litellm_params": {"model": "openai/fake-upstream-model", "api_base": upstream},
            }
        ],
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def proxy_config(folder: Path, upstream: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": SERVED_MODEL,
                "litellm_params": {"model": "openai/fake-upstream-model", "api_base": upstream, "api_key": "unused"},
            }
        ],
        "general_settings": {"master_key": PROXY_MASTER_KEY},
    }
    path = folder / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(target: Target, connections: int, seconds: float, repeats: int) -> list[LoadResult]:
    body = json.dumps({**REQUEST, "model": target.model}).encode()
    return [
        asyncio.run(run_load(target.url, body, headers=target.headers, connections=connections, seconds=seconds))
        for _ in range(repeats)
    ]


def median_of(results: list[LoadResult], metric: str) -> float:
    values = [getattr(result, metric) if metric != "p99" else result.percentile(0.99) for result in results]
    return statistics.median(values)


def report(rows: dict[tuple[str, int], list[LoadResult]], targets: list[Target], levels: list[int]) -> str:
    lines = ["| target | connections | req/s (median) | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for level in levels:
        for target in targets:
            results = rows[(target.name, level)]
            lines.append(
                f"| {target.name} | {level} | {median_of(results, 'rps'):.0f} | {median_of(results, 'p50'):.2f} | "
                f"{median_of(results, 'p99'):.2f} | {sum(result.errors for result in results)} |"
            )
    return "\n".join(lines)


def ratios(rows: dict[tuple[str, int], list[LoadResult]], names: set[str], levels: list[int]) -> list[str]:
    lines = []
    low, high = min(levels), max(levels)
    direct_p50 = median_of(rows[("direct", low)], "p50")
    gateway_p50 = median_of(rows[("gateway", low)], "p50")
    lines.append(f"gateway adds {gateway_p50 - direct_p50:.2f} ms p50 at {low} connection (target: at most 1 ms)")
    if "litellm-proxy" in names:
        proxy_p50 = median_of(rows[("litellm-proxy", low)], "p50")
        lines.append(f"litellm proxy adds {proxy_p50 - direct_p50:.2f} ms p50 at {low} connection")
        ratio = median_of(rows[("gateway", high)], "rps") / median_of(rows[("litellm-proxy", high)], "rps")
        lines.append(f"gateway / litellm proxy req/s at {high} connections: {ratio:.1f}x (target: at least 5x)")
    share = median_of(rows[("gateway", high)], "rps") / median_of(rows[("direct", high)], "rps")
    lines.append(f"gateway / direct req/s at {high} connections: {share:.2f}")
    return lines


def count_recorded_turns(prefix: str, partner: str) -> int:
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        sessions = client.zrange(f"{prefix}:partner:{partner}:sessions", 0, -1)
        return sum(int(client.llen(f"{prefix}:partner:{partner}:session:{sid.decode()}:turns")) for sid in sessions)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Upstream-path overhead: direct vs gateway vs litellm proxy.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per target and connection count.")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    arguments = parser.parse_args()

    prefix = f"bench-{secrets.token_hex(4)}"
    partner = "bench-partner"
    ports = {"upstream": free_port(), "gateway": free_port(), "proxy": free_port()}
    upstream = f"http://127.0.0.1:{ports['upstream']}/v1"
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        with (
            process(
                [sys.executable, "-m", "bench.fake_upstream", "--port", str(ports["upstream"])], {}, folder / "up.log"
            ),
            process(
                [
                    sys.executable,
                    "-m",
                    "clients.cli",
                    "serve",
                    "--config",
                    str(gateway_config(folder, upstream, prefix)),
                    "--port",
                    str(ports["gateway"]),
                    "--log-level",
                    "warning",
                ],
                {"CONVENTION_GATEWAY_KEY_PREFIX": prefix},
                folder / "gateway.log",
            ),
            proxy_process(folder, upstream, ports["proxy"]) as proxy,
        ):
            targets = [
                Target("direct", f"{upstream}/chat/completions", {}, "fake-upstream-model"),
                Target(
                    "gateway",
                    f"http://127.0.0.1:{ports['gateway']}/v1/chat/completions",
                    {"x-partner-id": partner},
                    SERVED_MODEL,
                ),
            ]
            wait_for(f"{upstream}/models")
            wait_for(f"http://127.0.0.1:{ports['gateway']}/healthz")
            if proxy is not None:
                proxy_headers = {"authorization": f"Bearer {PROXY_MASTER_KEY}"}
                wait_for(f"http://127.0.0.1:{ports['proxy']}/health/liveliness", timeout_s=180)
                targets.append(
                    Target(
                        "litellm-proxy",
                        f"http://127.0.0.1:{ports['proxy']}/v1/chat/completions",
                        proxy_headers,
                        SERVED_MODEL,
                    )
                )

            rows: dict[tuple[str, int], list[LoadResult]] = {}
            for level in arguments.connections:
                for target in targets:
                    print(f"measuring {target.name} at {level} connections ...", file=sys.stderr, flush=True)
                    rows[(target.name, level)] = measure(target, level, arguments.seconds, arguments.repeats)

            time.sleep(1.0)
            served = sum(
                result.succeeded_including_warmup
                for level in arguments.connections
                for result in rows[("gateway", level)]
            )
            recorded = count_recorded_turns(prefix, partner)

    print(report(rows, targets, arguments.connections))
    print()
    for line in ratios(rows, {target.name for target in targets}, arguments.connections):
        print(line)
    print(f"turns recorded in Redis: {recorded} for {served} successful gateway requests (warm-up included)")
    if not PROXY_BIN.exists():
        print("litellm proxy not measured: run `make bench-env` to create bench/.venv-litellm-proxy")


@contextmanager
def proxy_process(folder: Path, upstream: str, port: int) -> Iterator[subprocess.Popen[bytes] | None]:
    if not PROXY_BIN.exists():
        yield None
        return
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": PROXY_MASTER_KEY, "LITELLM_LOG": "ERROR"}
    command = [
        str(PROXY_BIN),
        "--config",
        str(proxy_config(folder, upstream)),
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    with process(command, env, folder / "proxy.log") as child:
        yield child


if __name__ == "__main__":
    main()
