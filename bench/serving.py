"""Serving many adapters: streamed chat completions from the real default model, each partner with its own adapter.

The benchmark starts its own gateway process on a free local port, with its own Redis key prefix and a temporary
artifact folder, and registers one random LoRA adapter per partner (bench.random_lora). Over HTTP it measures four
configurations. K is --clients (16), R is --requests (2), and the partners are --partners (8):

    batched:        K streaming clients spread over the partners, each sending R requests back to back.
    one at a time:  the same K * R requests from one client.
    plain:          the K clients again, on a second gateway whose max_loaded_adapters (--swap-max-loaded, 4) is
                    below the number of partners, so adapters are evicted and loaded again.
    swaps:          as plain, while a new adapter version of one partner is registered and activated every 0.5 s.

Time to first token runs from sending the request to the first chunk with text, and a chunk gap is the time
between two chunks with text. Each configuration runs 3 times, the configurations of a gateway taking turns, and
the report gives medians. The swapped-in adapters are written before each swap run, so that writing them does not
compete with the gateway. During the run the benchmark only renames their folders and registers them in Redis.

    .venv/bin/python -m bench.serving
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import redis

from adapters.base_model import resolve_model_path
from adapters.settings import DEFAULT_MODEL_NAME
from bench.random_lora import AdapterPublisher, RandomAdapterWriter, Swap
from bench.serving_gateway import GatewayProcess, LogCounts
from bench.serving_report import Measured, Results, SwapCheck, machine_lines, progress, report_findings, report_table
from bench.stream_load import PlannedRequest, RunResult, run_clients

MODEL_CACHE = Path.home() / ".cache" / "convention-gateway" / "models"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PROMPTS = [
    "Describe a cosy kitchen in a few sentences.",
    "Explain how to make a good cup of tea.",
    "What should I pack for a weekend hike?",
    "Tell me a short story about a lighthouse.",
]


def plan_requests(partners: list[str], clients: int, requests: int) -> list[list[PlannedRequest]]:
    """Returns each client's requests: client ``c`` speaks as partner ``c mod len(partners)``."""
    return [
        [
            PlannedRequest(partners[client % len(partners)], PROMPTS[(client + index) % len(PROMPTS)])
            for index in range(requests)
        ]
        for client in range(clients)
    ]


def one_at_a_time(plans: list[list[PlannedRequest]]) -> list[list[PlannedRequest]]:
    """Returns the same requests as a single client, taking the clients' requests in turn."""
    return [[plan[index] for index in range(len(plans[0])) for plan in plans]]


def load(gateway: GatewayProcess, plans: list[list[PlannedRequest]], max_tokens: int) -> RunResult:
    return asyncio.run(run_clients(gateway.chat_url, DEFAULT_MODEL_NAME, plans, max_tokens))


async def load_with_swaps(
    gateway: GatewayProcess,
    plans: list[list[PlannedRequest]],
    max_tokens: int,
    staged: list[tuple[str, Path]],
    publisher: AdapterPublisher,
    interval_s: float,
) -> tuple[RunResult, list[Swap]]:
    """Runs the load while publishing one staged adapter every ``interval_s`` until the load or the stage ends."""
    running = asyncio.create_task(run_clients(gateway.chat_url, DEFAULT_MODEL_NAME, plans, max_tokens))
    swaps: list[Swap] = []
    while True:
        await asyncio.wait({running}, timeout=interval_s)
        if running.done() or not staged:
            break
        partner, folder = staged.pop(0)
        swaps.append(publisher.publish(partner, folder))
    return await running, swaps


def check_swaps(run: RunResult, swaps: list[Swap], versions_before: dict[str, int]) -> tuple[int, set[str]]:
    """Returns the number of stale X-Adapter headers and the partners whose swapped-in versions served requests.

    A header is stale when it names a version older than the one active when the request was sent. A
    swapped-in version counts as served when a request sent after its registration carries it.
    """
    stale = 0
    for record in run.records:
        active = versions_before[record.partner]
        for swap in swaps:
            if swap.partner == record.partner and swap.registered_at <= record.started:
                active = swap.version
        if record.adapter_version is not None and record.adapter_version < active:
            stale += 1

    served = set()
    for swap in swaps:
        for record in run.records:
            if record.partner == swap.partner and record.started >= swap.registered_at:
                if record.adapter_version == swap.version:
                    served.add(swap.partner)
    return stale, served


def warm_up(gateway: GatewayProcess, plans: list[list[PlannedRequest]], max_tokens: int) -> Measured:
    """Sends each client's first request once, all at once, so that every partner's adapter is loaded.

    Failed warm-up requests are reported with the others. Only a gateway that fails all of them stops the run.
    """
    warm = Measured("warm-up", gateway.max_loaded, [], LogCounts())
    warm.add(load(gateway, [plan[:1] for plan in plans], max_tokens), gateway.log_counts_since_last_call())
    if not warm.runs[0].succeeded:
        raise RuntimeError(f"every warm-up request failed:\n{gateway.log_tail()}")
    return warm


def measure_batching(
    gateway: GatewayProcess, plans: list[list[PlannedRequest]], arguments: argparse.Namespace
) -> list[Measured]:
    """Runs the K-client load and the same requests one at a time, taking turns ``repeats`` times."""
    batched = Measured(f"{len(plans)} clients", gateway.max_loaded, [], LogCounts())
    single = Measured("one at a time", gateway.max_loaded, [], LogCounts())
    for _ in range(arguments.repeats):
        for measured, shape in ((batched, plans), (single, one_at_a_time(plans))):
            measured.add(load(gateway, shape, arguments.max_tokens), gateway.log_counts_since_last_call())
    return [batched, single]


def measure_swaps(
    gateway: GatewayProcess,
    plans: list[list[PlannedRequest]],
    arguments: argparse.Namespace,
    writer: RandomAdapterWriter,
    publisher: AdapterPublisher,
    staging: Path,
) -> tuple[list[Measured], SwapCheck]:
    """Runs the K-client load without and with adapter swaps, taking turns ``repeats`` times."""
    plain = Measured(f"{len(plans)} clients", gateway.max_loaded, [], LogCounts())
    swapping = Measured(f"{len(plans)} clients, swaps", gateway.max_loaded, [], LogCounts())
    check = SwapCheck()
    partners = itertools.cycle(sorted({plan[0].partner for plan in plans}))
    for _ in range(arguments.repeats):
        plain.add(load(gateway, plans, arguments.max_tokens), gateway.log_counts_since_last_call())

        # Enough adapters for 1.5 times the plain run's duration. The swapper stops early if they run out.
        count = math.ceil(1.5 * plain.runs[-1].seconds / arguments.swap_interval) + 2
        staged = []
        for partner in itertools.islice(partners, count):
            staged.append((partner, writer.write(staging / f"{partner}-{secrets.token_hex(4)}")))

        versions_before = dict(publisher.active)
        run, swaps = asyncio.run(
            load_with_swaps(gateway, plans, arguments.max_tokens, staged, publisher, arguments.swap_interval)
        )
        swapping.add(run, gateway.log_counts_since_last_call(), f"{len(swaps)} swaps")
        stale, served = check_swaps(run, swaps, versions_before)
        check.swaps += len(swaps)
        check.stale_headers += stale
        check.partners_swapped.update(swap.partner for swap in swaps)
        check.partners_served.update(served)
    return [plain, swapping], check


def keep_logs(folder: Path) -> Path:
    """Copies the gateways' logs out of the temporary folder, which is deleted at the end."""
    destination = Path(tempfile.mkdtemp(prefix="cgbench-logs-"))
    for log in folder.glob("gateway-*.log"):
        shutil.copy(log, destination / log.name)
    return destination


def delete_keys(client: redis.Redis, prefix: str) -> None:
    """Deletes every key under the benchmark's prefix, and its (unused) training queue's RQ keys."""
    for pattern in (f"{prefix}:*", f"rq:*{prefix}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Streaming throughput and latency with many partners' adapters.")
    parser.add_argument("--partners", type=int, default=8, help="Partners, each with its own adapter.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent streaming clients.")
    parser.add_argument(
        "--requests",
        type=int,
        default=2,
        help="Requests each client sends back to back per run. With 1, no request follows a swap.",
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per configuration; the report gives medians.")
    parser.add_argument("--swap-interval", type=float, default=0.5, help="Seconds between adapter swaps.")
    parser.add_argument("--swap-max-loaded", type=int, default=4, help="max_loaded_adapters of the swap gateway.")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    started = time.monotonic()
    load_before = os.getloadavg()
    prefix = f"cgbench-{secrets.token_hex(4)}"
    partners = [f"bench-partner-{index}" for index in range(arguments.partners)]
    plans = plan_requests(partners, arguments.clients, arguments.requests)
    print(
        f"settings: {arguments.partners} partners, {arguments.clients} clients, {arguments.requests} requests per "
        f"client per run ({arguments.clients * arguments.requests} per run), max_tokens {arguments.max_tokens}, "
        f"temperature 0, {arguments.repeats} runs per configuration, swaps every {arguments.swap_interval} s, "
        f"max_loaded_adapters {arguments.partners} then {arguments.swap_max_loaded}, Redis prefix {prefix}",
        flush=True,
    )

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with tempfile.TemporaryDirectory(prefix="cgbench-") as temporary:
            results = run_benchmark(Path(temporary), prefix, partners, plans, arguments, client)
            if any(row.failed or row.log.errors for row in results.all_runs):
                results.kept_logs = keep_logs(Path(temporary))
    finally:
        delete_keys(client, prefix)
        client.close()

    print(report_table(results.batching + results.swapping))
    print()
    for line in report_findings(results) + machine_lines(load_before, time.monotonic() - started):
        print(line)


def run_benchmark(
    folder: Path,
    prefix: str,
    partners: list[str],
    plans: list[list[PlannedRequest]],
    arguments: argparse.Namespace,
    client: redis.Redis,
) -> Results:
    """Registers one adapter per partner, then measures on two gateways started one after the other."""
    model_path = resolve_model_path(DEFAULT_MODEL_NAME, MODEL_CACHE)
    artifact_dir, staging = folder / "adapters", folder / "staging"
    writer = RandomAdapterWriter(model_path)
    publisher = AdapterPublisher(client, prefix, artifact_dir, DEFAULT_MODEL_NAME)
    for partner in partners:
        publisher.publish(partner, writer.write(staging / partner))

    def gateway_process(max_loaded: int) -> GatewayProcess:
        return GatewayProcess(
            folder, key_prefix=prefix, artifact_dir=artifact_dir, model_cache_dir=MODEL_CACHE, max_loaded=max_loaded
        )

    progress("starting a gateway with one loaded adapter per partner")
    with gateway_process(len(partners)) as gateway:
        warm_ups = [warm_up(gateway, plans, arguments.max_tokens)]
        batching = measure_batching(gateway, plans, arguments)

    progress(f"starting a gateway with max_loaded_adapters={arguments.swap_max_loaded}")
    with gateway_process(arguments.swap_max_loaded) as gateway:
        warm_ups.append(warm_up(gateway, plans, arguments.max_tokens))
        swapping, check = measure_swaps(gateway, plans, arguments, writer, publisher, staging)
    return Results(batching=batching, swapping=swapping, warm_ups=warm_ups, check=check)


if __name__ == "__main__":
    main()
