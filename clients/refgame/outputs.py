"""Writing a run's results: results.json, trials.csv, summary.csv, refgame.png, and the summary table."""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

logger = logging.getLogger(__name__)

TRIAL_COLUMNS = (
    "speaker",
    "model",
    "game",
    "context_id",
    "repetition",
    "trial",
    "target",
    "shown",
    "message",
    "words",
    "tokens",
    "attempts",
    "violations",
    "too_long",
    "rejected",
    "pick",
    "correct",
    "listener_output",
    "adapter",
    "session_id",
)
SUMMARY_COLUMNS = (
    "speaker",
    "model",
    "game",
    "context_id",
    "repetition",
    "mean_words",
    "mean_tokens",
    "accuracy",
    "novelty",
    "length_ratio",
)


class OutputDirError(OSError):
    """The output folder cannot be created or written."""


def check_output_dir(path: Path) -> None:
    """Creates ``path`` and writes a probe file there, so a bad folder fails before any game is played."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OutputDirError(f"output folder {path} is not writable: {error.strerror or error}") from error


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return ";".join(str(part) for part in value)
    return "" if value is None else value


def _summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for speaker in results["speakers"]:
        scopes = [(game["game"], game["context_id"], game) for game in speaker["games"]]
        scopes.append(("all", "", speaker["aggregate"]))
        for game, context_id, metrics in scopes:
            for index, repetition in enumerate(metrics.get("repetitions", [])):
                rows.append(
                    {
                        "speaker": speaker["label"],
                        "model": speaker["model"],
                        "game": game,
                        "context_id": context_id,
                        "repetition": repetition,
                        "mean_words": metrics["words_by_repetition"][index],
                        "mean_tokens": metrics["tokens_by_repetition"][index],
                        "accuracy": metrics["accuracy_by_repetition"][index],
                        "novelty": metrics["novelty_by_repetition"][index],
                        "length_ratio": metrics["length_ratio"],
                    }
                )
    return rows


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in columns})


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Draws words per message and accuracy by repetition, one line per speaker."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (words_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for speaker in results["speakers"]:
        aggregate = speaker["aggregate"]
        repetitions = aggregate.get("repetitions", [])
        words_axis.plot(repetitions, aggregate["words_by_repetition"], marker="o", label=speaker["label"])
        accuracy_axis.plot(repetitions, aggregate["accuracy_by_repetition"], marker="o", label=speaker["label"])
    words_axis.set(title="Words per message", xlabel="repetition", ylabel="mean words")
    accuracy_axis.set(title="Listener accuracy", xlabel="repetition", ylabel="share correct", ylim=(-0.05, 1.05))
    for axis in (words_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(results: dict[str, Any], folder: Path) -> list[Path]:
    """Writes the four output files into ``folder`` and returns their paths."""
    paths = [folder / name for name in ("results.json", "trials.csv", "summary.csv", "refgame.png")]
    try:
        paths[0].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        _write_csv(paths[1], TRIAL_COLUMNS, results["trials"])
        _write_csv(paths[2], SUMMARY_COLUMNS, _summary_rows(results))
        write_plot(results, paths[3])
    except OSError as error:
        raise OutputDirError(f"writing the results into {folder} failed: {error}") from error
    logger.info("Reference game %s: results written to %s", results["run_id"], folder)
    return paths


def _series(values: list[float | None], digits: int) -> str:
    return " → ".join("–" if value is None else f"{value:.{digits}f}" for value in values)


def summary_table(results: dict[str, Any]) -> Table:
    """Returns one row per speaker with its measures averaged over games."""
    table = Table(title=f"Reference game {results['run_id']}")
    for column in ("speaker", "games", "words by repetition", "tokens by repetition", "accuracy by repetition"):
        table.add_column(column)
    for column in ("last/first words", "novelty", "violations"):
        table.add_column(column, justify="right")
    for speaker in results["speakers"]:
        aggregate = speaker["aggregate"]
        tokens = _series(aggregate["tokens_by_repetition"], 1) if speaker["tokens_available"] else "unavailable"
        novelty = [value for value in aggregate["novelty_by_repetition"] if value is not None]
        ratio = aggregate["length_ratio"]
        table.add_row(
            speaker["label"],
            str(aggregate["games"]),
            _series(aggregate["words_by_repetition"], 1),
            tokens,
            _series(aggregate["accuracy_by_repetition"], 2),
            "–" if ratio is None else f"{ratio:.2f}",
            f"{sum(novelty) / len(novelty):.2f}" if novelty else "–",
            str(aggregate["violations"]),
        )
    return table
