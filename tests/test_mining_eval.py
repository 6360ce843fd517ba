"""Tests for the precision and recall measurement of the re-mention heuristic."""

from __future__ import annotations

import pytest

from trainer.mining_eval import (
    DEFAULT_SAMPLE,
    Dialogue,
    Evaluation,
    evaluate,
    load_sample,
    parse_dialogue,
    score_dialogue,
    wilson_interval,
)

BOOKSHELF = "the tall oak bookshelf by the window"


def tiny_dialogue() -> Dialogue:
    return Dialogue(
        id="tiny",
        messages=[],
        labels={
            (BOOKSHELF, "the bookshelf", 1): True,
            (BOOKSHELF, "the oak bookshelf", 3): False,
            (BOOKSHELF, "the shelf", 3): True,
        },
    )


def test_sample_has_enough_candidates() -> None:
    evaluation = evaluate(load_sample(DEFAULT_SAMPLE), progress=False)

    assert evaluation.predicted >= 100


def test_sample_has_thirty_dialogues() -> None:
    assert len(load_sample(DEFAULT_SAMPLE)) >= 30


def test_sample_predictions_all_labelled() -> None:
    evaluation = evaluate(load_sample(DEFAULT_SAMPLE), progress=False)

    assert evaluation.unlabelled == []


def test_known_pairs_counted_correctly() -> None:
    evaluation = Evaluation()
    predictions = [
        (BOOKSHELF, "the bookshelf", 1),
        (BOOKSHELF, "the oak bookshelf", 3),
        ("a grey sofa with wooden legs", "the sofa", 2),
    ]

    score_dialogue(evaluation, tiny_dialogue(), predictions)

    assert evaluation.true_positives == 1
    assert [pair.later for pair in evaluation.false_positives] == ["the oak bookshelf"]
    assert [pair.later for pair in evaluation.unlabelled] == ["the sofa"]
    assert [pair.later for pair in evaluation.misses] == ["the shelf"]
    assert evaluation.precision == pytest.approx(0.5)
    assert evaluation.recall == pytest.approx(0.5)


def test_message_index_must_match() -> None:
    evaluation = Evaluation()

    score_dialogue(evaluation, tiny_dialogue(), [(BOOKSHELF, "the bookshelf", 2)])

    assert evaluation.true_positives == 0


def test_contradictory_labels_raise() -> None:
    label = {"first": BOOKSHELF, "later": "the bookshelf", "later_message_index": 1}
    record = {"id": "x", "messages": [], "labels": [{**label, "correct": True}, {**label, "correct": False}]}

    with pytest.raises(ValueError, match="contradictory"):
        parse_dialogue(record)


def test_wilson_eight_of_ten() -> None:
    low, high = wilson_interval(8, 10)

    assert low == pytest.approx(0.490, abs=0.001)
    assert high == pytest.approx(0.943, abs=0.001)


def test_wilson_zero_of_ten() -> None:
    low, high = wilson_interval(0, 10)

    assert low == 0.0
    assert high == pytest.approx(0.278, abs=0.001)
