"""Running the probe: every item against every model, scored, with a progress bar and the results as data."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clients.probe.client import ProbeClient
from clients.probe.config import ModelSpec, ProbeConfig
from clients.probe.data import ProbeItem, load_items
from clients.probe.scoring import ItemScore, ModelSummary, score_completion, summarize
from clients.refgame.outputs import check_output_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    """One model's completion of one item, and its scores."""

    model_label: str
    item: ProbeItem
    completion: str
    adapter: str | None
    finish_reason: str | None
    score: ItemScore

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_label,
            "item_id": self.item.id,
            "kind": self.item.kind,
            "domain": self.item.domain,
            "prefix": self.item.prefix,
            "first_mention": self.item.first_mention,
            "head": self.item.head,
            "completion": self.completion,
            "adapter": self.adapter,
            "finish_reason": self.finish_reason,
            **self.score.to_dict(),
        }


@dataclass
class ProbeResults:
    """The outcome of a run: the configuration, every item result and each model's summary, by label."""

    config: ProbeConfig
    items: list[ItemResult] = field(default_factory=list)
    summaries: dict[str, ModelSummary] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "summaries": {label: summary.to_dict() for label, summary in self.summaries.items()},
            "items": [result.to_dict() for result in self.items],
        }


def run_probe(config: ProbeConfig, *, console: Console | None = None) -> ProbeResults:
    """Probes every model on the configured items, raising ProbeDataError or ProbeGatewayError at the first problem.

    Raises OutputDirError before the first request when ``config.output_dir`` is set but cannot be written. Writes
    no result files: ``clients.probe.report`` writes the outputs.
    """
    items = load_items(config.dialogues_path)
    if config.limit is not None:
        items = items[: config.limit]
    if config.output_dir is not None:
        check_output_dir(config.output_dir)
    results = ProbeResults(config=config)
    # TODO: a request that still fails after the retries discards the finished items. Write them as partial
    # results, as run_refgame does for finished games.
    client = ProbeClient(config.base_url, partner_id=config.partner_id, timeout_s=config.timeout_s)
    try:
        for spec in config.models:
            client.check_model(spec)
        with _progress(console) as progress:
            for spec in config.models:
                model_results = _probe_model(client, spec, items, config, progress)
                results.items.extend(model_results)
                results.summaries[spec.label] = summarize([(result.item, result.score) for result in model_results])
    finally:
        client.close()
    results.finished_at = time.time()
    return results


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _probe_model(
    client: ProbeClient, spec: ModelSpec, items: list[ProbeItem], config: ProbeConfig, progress: Progress
) -> list[ItemResult]:
    task = progress.add_task(f"probe {spec.label}", total=len(items))
    results = []
    for item in items:
        continuation = client.continue_reply(spec, item.messages, item.prefix, max_tokens=config.max_tokens)
        score = score_completion(continuation.text, item)
        logger.debug("Probe %s, item %s: refers=%s mention=%r", spec.label, item.id, score.refers, score.mention)
        results.append(
            ItemResult(
                model_label=spec.label,
                item=item,
                completion=continuation.text,
                adapter=continuation.adapter,
                finish_reason=continuation.finish_reason,
                score=score,
            )
        )
        progress.advance(task)
    return results
