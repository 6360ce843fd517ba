"""The report of bench.serving: its table, its findings and the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.serving_gateway import LogCounts
from bench.stream_load import RunResult, percentile


@dataclass
class Measured:
    """The runs of one configuration and what the gateway logged during them."""

    name: str
    max_loaded: int
    runs: list[RunResult]
    log: LogCounts

    def median(self, metric: Callable[[RunResult], float]) -> float:
        return statistics.median(metric(run) for run in self.runs)

    @property
    def failed(self) -> int:
        return sum(run.failed for run in self.runs)

    def add(self, run: RunResult, log: LogCounts, note: str = "") -> None:
        """Adds one run and reports it on stderr, so that the spread between runs is visible."""
        self.runs.append(run)
        self.log += log
        progress(
            f"{self.name} (max loaded {self.max_loaded}) run {len(self.runs)}: {run.tokens_per_s:.1f} tokens/s, "
            f"TTFT p50 {percentile(run.first_token_ms, 0.5):.0f} ms, {run.seconds:.1f} s, {run.failed} failed, "
            f"{log.loads} adapter loads, {log.evictions} evictions{', ' + note if note else ''}"
        )


@dataclass
class Results:
    """Everything the report needs: the measured configurations, the warm-ups and the swap checks."""

    batching: list[Measured]
    swapping: list[Measured]
    warm_ups: list[Measured]
    check: SwapCheck
    kept_logs: Path | None = None

    @property
    def all_runs(self) -> list[Measured]:
        return [*self.warm_ups, *self.batching, *self.swapping]


@dataclass
class SwapCheck:
    """Counts from the swap runs about adapter replacement, summed over the runs."""

    swaps: int = 0
    stale_headers: int = 0
    partners_swapped: set[str] = field(default_factory=set)
    partners_served: set[str] = field(default_factory=set)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report_table(rows: list[Measured]) -> str:
    lines = [
        "| configuration | max loaded adapters | completion tokens/s | TTFT p50 ms | TTFT p99 ms | TTFT max ms | "
        "chunk gap p50 ms | chunk gap p99 ms | failed | adapter loads | evictions |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        worst = worst_first_token(row)
        lines.append(
            f"| {row.name} | {row.max_loaded} | {row.median(lambda run: run.tokens_per_s):.1f} | "
            f"{row.median(lambda run: percentile(run.first_token_ms, 0.5)):.0f} | "
            f"{row.median(lambda run: percentile(run.first_token_ms, 0.99)):.0f} | {worst:.0f} | "
            f"{row.median(lambda run: percentile(run.chunk_gaps_ms, 0.5)):.0f} | "
            f"{row.median(lambda run: percentile(run.chunk_gaps_ms, 0.99)):.0f} | {row.failed} | "
            f"{row.log.loads} | {row.log.evictions} |"
        )
    return "\n".join(lines)


def report_findings(results: Results) -> list[str]:
    batched, single = results.batching
    plain, swap = results.swapping
    check = results.check

    def ratio(numerator: Measured, denominator: Measured, metric: Callable[[RunResult], float]) -> float:
        return numerator.median(metric) / denominator.median(metric)

    def first_token(fraction: float) -> Callable[[RunResult], float]:
        return lambda run: percentile(run.first_token_ms, fraction)

    failed = ", ".join(f"{row.name} (max loaded {row.max_loaded}) {row.failed}" for row in results.all_runs)
    lines = [
        f"tokens/s, {batched.name} / one at a time: {ratio(batched, single, lambda run: run.tokens_per_s):.2f}x "
        "(target: at least 3x)",
        f"TTFT p50, {batched.name} / lone request: {ratio(batched, single, first_token(0.5)):.2f}x "
        "(target: at most 2x)",
        f"TTFT during swaps / without: p50 {ratio(swap, plain, first_token(0.5)):.2f}x, "
        f"p99 {ratio(swap, plain, first_token(0.99)):.2f}x, max {worst_first_token(swap):.0f} ms / "
        f"{worst_first_token(plain):.0f} ms",
        f"failed requests: {failed} (target: 0)",
        f"completion tokens per successful request: {tokens_per_request(results.all_runs):.1f} on average",
        f"swaps: {check.swaps} in {len(swap.runs)} runs; partners whose swapped-in version served a request sent "
        f"after the swap: {len(check.partners_served)}/{len(check.partners_swapped)}; "
        f"stale X-Adapter headers: {check.stale_headers}",
        f"gateway log: {sum(row.log.over_limit for row in results.all_runs)} warnings of more adapters loaded than "
        f"max_loaded_adapters (running requests pin them), "
        f"{sum(row.log.errors for row in results.all_runs)} error lines",
    ]
    for row in results.all_runs:
        errors = sorted({record.error for run in row.runs for record in run.records if record.error})
        if errors:
            lines.append(f"failures in {row.name} (max loaded {row.max_loaded}): {'; '.join(errors)}")
    if results.kept_logs is not None:
        lines.append(f"gateway logs kept in {results.kept_logs}")
    first_error = next((row.log.first_error for row in results.all_runs if row.log.first_error), "")
    if first_error:
        lines.append(f"first error in the gateway log:\n{first_error}")
    return lines


def worst_first_token(row: Measured) -> float:
    """Returns the longest time to first token of any run of ``row``."""
    return max((max(run.first_token_ms, default=float("nan")) for run in row.runs), default=float("nan"))


def tokens_per_request(rows: list[Measured]) -> float:
    records = [record for row in rows for run in row.runs for record in run.succeeded]
    return statistics.mean(record.completion_tokens for record in records) if records else float("nan")


def machine_lines(load_before: tuple[float, float, float], seconds: float) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load_after = os.getloadavg()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads "
        f"(the gateway uses torch's default too), Python {platform.python_version()}",
        f"load average (1, 5, 15 min) before: {', '.join(f'{value:.2f}' for value in load_before)}; "
        f"after: {', '.join(f'{value:.2f}' for value in load_after)}",
        f"total time: {seconds:.0f} s",
    ]
