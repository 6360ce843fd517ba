"""The comparison's table: one row per compared model, game measures beside probe rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from clients.probe.scoring import ModelSummary
from clients.refgame.config import SpeakerSpec

# (key, column heading, digits); rates are shown as fractions.
COLUMNS = (
    ("words_first", "words/msg rep 1", 1),
    ("words_last", "words/msg last rep", 1),
    ("length_ratio", "last/first length", 2),
    ("accuracy_first", "accuracy rep 1", 2),
    ("accuracy_last", "accuracy last rep", 2),
    ("accuracy", "accuracy all", 2),
    ("novelty", "word novelty", 2),
    ("retries", "re-asks", 0),
    ("concise_rate", "probe concise", 2),
    ("reference_rate", "probe refers", 2),
    ("mean_length_ratio", "probe length ratio", 2),
    ("too_early_rate", "probe too early", 2),
)


def _first_last(series: list[float | None]) -> tuple[float | None, float | None]:
    return (series[0], series[-1]) if series else (None, None)


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def comparison_rows(
    speakers: list[SpeakerSpec], game_speakers: list[dict[str, Any]], summaries: dict[str, ModelSummary]
) -> list[dict[str, Any]]:
    """Returns one row per speaker with its game aggregates and probe rates."""
    games = {entry["label"]: entry["aggregate"] for entry in game_speakers}
    rows = []
    for speaker in speakers:
        game, probe = games[speaker.label], summaries[speaker.label]
        words_first, words_last = _first_last(game["words_by_repetition"])
        accuracy_first, accuracy_last = _first_last(game["accuracy_by_repetition"])
        rows.append(
            {
                "label": speaker.label,
                "model": speaker.model + ("@none" if speaker.bare else ""),
                "games": game["games"],
                "words_first": words_first,
                "words_last": words_last,
                "length_ratio": game["length_ratio"],
                "accuracy_first": accuracy_first,
                "accuracy_last": accuracy_last,
                "accuracy": game["accuracy"],
                # Novelty is undefined in the first repetition, so the mean covers the later ones.
                "novelty": _mean(game["novelty_by_repetition"][1:]),
                "retries": game["retries"],
                "concise_rate": probe.concise_rate,
                "reference_rate": probe.reference_rate,
                "mean_length_ratio": probe.mean_length_ratio,
                "too_early_rate": probe.too_early_rate,
            }
        )
    return rows


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if digits else str(int(value))


def comparison_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Base model vs. convention adapter vs. partner adapter")
    table.add_column("model")
    for _, heading, _ in COLUMNS:
        table.add_column(heading, justify="right")
    for row in rows:
        table.add_row(row["label"], *(_cell(row[key], digits) for key, _, digits in COLUMNS))
    return table


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Writes the table as Markdown, ready to paste into the docs."""
    header = ["model", "served as", *(heading for _, heading, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        cells = [row["label"], f"`{row['model']}`", *(_cell(row[key], digits) for key, _, digits in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    training = results.get("training")
    if training is not None:
        outcome = f"Training job {training['job_id']} for the partner adapter ended {training['status']}"
        error = training.get("error")
        lines += ["", f"{outcome}: {error['message']}" if error else f"{outcome}."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
