"""Convention formation measures of reference games: message length, accuracy and word novelty by repetition.

Per game, each measure is a list with one value per repetition (index 0 is repetition 1). Word novelty of a message
is the share of its content words (words outside ``STOPWORDS``) that the previous message about the same target did
not contain. It is undefined for repetition 1 and for messages without content words.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Any

from clients.refgame.forbidden import message_words
from clients.refgame.records import TrialRecord

STOPWORDS = frozenset(
    "a an the this that these those it its is are was were be been of in on at to for from with by and or but not "
    "no one ones thing things item you your i me my we our they them their he she his her as so very just like "
    "what which who whom used use can could would will".split()
)


def content_words(message: str) -> set[str]:
    return {word for word in message_words(message) if word not in STOPWORDS}


def word_novelty(message: str, previous: str) -> float | None:
    """Returns the share of ``message``'s content words missing from ``previous``; None without content words."""
    words = content_words(message)
    if not words:
        return None
    return len(words - content_words(previous)) / len(words)


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return mean(present) if present else None


def _by_repetition(trials: list[TrialRecord]) -> dict[int, list[TrialRecord]]:
    groups: dict[int, list[TrialRecord]] = defaultdict(list)
    for trial in trials:
        groups[trial.repetition].append(trial)
    return dict(sorted(groups.items()))


def _novelty_by_repetition(trials: list[TrialRecord], repetitions: list[int]) -> list[float | None]:
    previous: dict[str, str] = {}
    values: dict[int, list[float | None]] = defaultdict(list)
    for trial in sorted(trials, key=lambda record: record.trial):
        if trial.target in previous:
            values[trial.repetition].append(word_novelty(trial.message, previous[trial.target]))
        previous[trial.target] = trial.message
    return [_mean_or_none(values.get(repetition, [])) for repetition in repetitions]


def length_ratio(words_by_repetition: list[float | None]) -> float | None:
    """Returns mean words of the last repetition over the first; None when either is missing or the first is 0."""
    if len(words_by_repetition) < 2:
        return None
    first, last = words_by_repetition[0], words_by_repetition[-1]
    if first is None or last is None or first == 0:
        return None
    return last / first


def game_metrics(trials: list[TrialRecord]) -> dict[str, Any]:
    """Returns one game's measures; token means are None when any trial lacks a token count."""
    groups = _by_repetition(trials)
    repetitions = list(groups)
    words = [mean(trial.words for trial in group) for group in groups.values()]
    tokens = [
        None if any(trial.tokens is None for trial in group) else mean(trial.tokens or 0 for trial in group)
        for group in groups.values()
    ]
    accuracy = [mean(1.0 if trial.correct else 0.0 for trial in group) for group in groups.values()]
    return {
        "repetitions": repetitions,
        "words_by_repetition": words,
        "tokens_by_repetition": tokens,
        "accuracy_by_repetition": accuracy,
        "novelty_by_repetition": _novelty_by_repetition(trials, repetitions),
        "length_ratio": length_ratio(words),
        "accuracy": mean(1.0 if trial.correct else 0.0 for trial in trials),
        "violations": sum(1 for trial in trials if trial.violations),
        "too_long": sum(1 for trial in trials if trial.too_long),
        "retries": sum(trial.attempts - 1 for trial in trials),
    }


def _mean_series(series: list[list[float | None]]) -> list[float | None]:
    length = max((len(values) for values in series), default=0)
    return [_mean_or_none([values[i] for values in series if i < len(values)]) for i in range(length)]


def aggregate_metrics(games: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages per-game measures of one speaker over its games, ignoring missing values."""
    if not games:
        return {"games": 0}
    series_keys = ("words_by_repetition", "tokens_by_repetition", "accuracy_by_repetition", "novelty_by_repetition")
    aggregated: dict[str, Any] = {"games": len(games)}
    for key in series_keys:
        aggregated[key] = _mean_series([game[key] for game in games])
    aggregated["repetitions"] = max((game["repetitions"] for game in games), key=len)
    aggregated["length_ratio"] = _mean_or_none([game["length_ratio"] for game in games])
    aggregated["accuracy"] = mean(game["accuracy"] for game in games)
    for key in ("violations", "too_long", "retries"):
        aggregated[key] = sum(game[key] for game in games)
    return aggregated
