"""The probe's outputs: probe.json (everything), probe.csv (one row per model and item) and a rich table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.table import Table

from clients.probe.runner import ProbeResults

JSON_NAME = "probe.json"
CSV_NAME = "probe.csv"
CSV_FIELDS = (
    "model",
    "item_id",
    "kind",
    "domain",
    "adapter",
    "completion",
    "refers",
    "mention",
    "mention_words",
    "reference_words",
    "length_ratio",
    "concise",
    "too_early",
)


def write_outputs(results: ProbeResults, output_dir: Path) -> list[Path]:
    """Writes probe.json and probe.csv into ``output_dir``, creating it, and returns the written paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / JSON_NAME
    json_path.write_text(json.dumps(results.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    csv_path = output_dir / CSV_NAME
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for result in results.items:
            writer.writerow(result.to_dict())
    return [json_path, csv_path]


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def summary_table(results: ProbeResults) -> Table:
    """Returns one row per model with the probe's rates."""
    table = Table(
        title="Re-mention probe",
        caption="items: re-mention items, first: first-mention items, too early: first mentions shortened",
    )
    table.add_column("model", overflow="fold")
    table.add_column("items", justify="right")
    table.add_column("concise", justify="right")
    table.add_column("refers", justify="right")
    table.add_column("length ratio", justify="right")
    table.add_column("first", justify="right")
    table.add_column("too early", justify="right")
    for label, summary in results.summaries.items():
        ratio = "n/a" if summary.mean_length_ratio is None else f"{summary.mean_length_ratio:.2f}"
        table.add_row(
            label,
            str(summary.remention_items),
            _percent(summary.concise_rate),
            _percent(summary.reference_rate),
            ratio,
            str(summary.first_mention_items),
            _percent(summary.too_early_rate),
        )
    return table
