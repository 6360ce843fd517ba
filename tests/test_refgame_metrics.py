"""Reference game measures on hand-made trials, with the expected values worked out in each test."""

from __future__ import annotations

import pytest

from clients.refgame.metrics import aggregate_metrics, content_words, game_metrics, length_ratio, word_novelty
from clients.refgame.records import TrialRecord


def trial(index: int, repetition: int, target: str, message: str, correct: bool, tokens: int | None) -> TrialRecord:
    return TrialRecord(
        speaker="s",
        model="m",
        game=0,
        context_id="kitchen",
        repetition=repetition,
        trial=index,
        target=target,
        shown=["a", "b"],
        message=message,
        words=len(message.split()),
        tokens=tokens,
        attempts=1,
        correct=correct,
    )


# Two targets, two repetitions.
# Repetition 1: "the small red cup" (4 words, 5 tokens, right), "a tall green vase" (4 words, 6 tokens, wrong).
# Repetition 2: "red cup" (2 words, 2 tokens, right), "green bottle" (2 words, 3 tokens, right).
TRIALS = [
    trial(0, 1, "cup", "the small red cup", True, 5),
    trial(1, 1, "vase", "a tall green vase", False, 6),
    trial(2, 2, "cup", "red cup", True, 2),
    trial(3, 2, "vase", "green bottle", True, 3),
]


def test_content_words_drop_stopwords() -> None:
    assert content_words("The small red one with a handle") == {"small", "red", "handle"}


def test_word_novelty_counts_new_words() -> None:
    # Content words {"green", "bottle"}; "bottle" is not in {"tall", "green", "vase"}: 1 of 2 is new.
    assert word_novelty("green bottle", "a tall green vase") == 0.5


def test_word_novelty_without_content_words() -> None:
    assert word_novelty("the one", "the red cup") is None


def test_words_by_repetition() -> None:
    # (4 + 4) / 2 = 4 and (2 + 2) / 2 = 2.
    assert game_metrics(TRIALS)["words_by_repetition"] == [4, 2]


def test_tokens_by_repetition() -> None:
    # (5 + 6) / 2 = 5.5 and (2 + 3) / 2 = 2.5.
    assert game_metrics(TRIALS)["tokens_by_repetition"] == [5.5, 2.5]


def test_tokens_missing_when_uncounted() -> None:
    uncounted = [*TRIALS[:3], trial(3, 2, "vase", "green bottle", True, None)]

    assert game_metrics(uncounted)["tokens_by_repetition"] == [5.5, None]


def test_accuracy_by_repetition() -> None:
    # Repetition 1: one of two right; repetition 2: both right. Overall 3 of 4.
    metrics = game_metrics(TRIALS)

    assert metrics["accuracy_by_repetition"] == [0.5, 1.0]
    assert metrics["accuracy"] == 0.75


def test_length_ratio_last_over_first() -> None:
    # 2 words in the last repetition over 4 in the first.
    assert game_metrics(TRIALS)["length_ratio"] == 0.5


def test_length_ratio_needs_two_repetitions() -> None:
    assert length_ratio([4.0]) is None


def test_novelty_by_repetition() -> None:
    # cup: {"red", "cup"} vs {"small", "red", "cup"}: 0 new. vase: 1 of 2 new (see above). Mean 0.25.
    assert game_metrics(TRIALS)["novelty_by_repetition"] == [None, 0.25]


def test_aggregate_averages_games() -> None:
    second = game_metrics([trial(0, 1, "cup", "cup", False, 1), trial(1, 2, "cup", "cup", True, 1)])
    aggregate = aggregate_metrics([game_metrics(TRIALS), second])

    # Words: first game [4, 2], second game [1, 1]: means [2.5, 1.5]. Ratios 0.5 and 1.0: mean 0.75.
    assert aggregate["words_by_repetition"] == [2.5, 1.5]
    assert aggregate["length_ratio"] == pytest.approx(0.75)
    assert aggregate["games"] == 2
