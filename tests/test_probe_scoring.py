"""Scoring hand-written probe completions: references, mention lengths, and the per-model rates."""

from __future__ import annotations

import pytest

from clients.probe.config import parse_model
from clients.probe.data import ProbeItem
from clients.probe.scoring import WINDOW_SLACK_WORDS, score_completion, summarize

SKILLET = ProbeItem(
    id="skillet",
    kind="remention",
    messages=[{"role": "user", "content": "unused"}],
    prefix="Heat",
    first_mention="the heavy cast-iron skillet with the wooden handle",
    head="skillet",
    short_forms=["the cast-iron skillet", "the skillet", "the pan"],
)
# "the heavy cast-iron skillet with the wooden handle": cast-iron is one word.
SKILLET_WORDS = 8
# Words up to and including the head: "the heavy cast-iron skillet".
SKILLET_HEAD_WORDS = 4
PAN = ProbeItem(
    id="pan",
    kind="first_mention",
    messages=[{"role": "user", "content": "unused"}],
    prefix="Use",
    first_mention="a small nonstick frying pan about 20 centimetres across",
    head="pan",
    short_forms=["the nonstick pan", "the pan"],
)


def test_short_remention_is_concise() -> None:
    score = score_completion(" the skillet over high heat.", SKILLET)

    assert score.refers
    assert score.mention == "the skillet"
    assert score.mention_words == 2
    assert score.length_ratio == pytest.approx(2 / SKILLET_WORDS)
    assert score.concise


def test_repeated_first_mention_not_concise() -> None:
    score = score_completion(" the heavy cast-iron skillet with the wooden handle until it smokes.", SKILLET)

    assert score.mention_words == SKILLET_WORDS
    assert score.length_ratio == pytest.approx(1.0)
    assert not score.concise


def test_partial_tail_counts_repeated_words() -> None:
    # "the skillet" plus "with the" repeated from the first mention, then a different word.
    score = score_completion(" the skillet with the lid on.", SKILLET)

    assert score.mention_words == 4
    assert score.concise


def test_short_form_noun_counts() -> None:
    score = score_completion(" the Pan, then add butter.", SKILLET)

    assert score.mention == "the pan"
    assert score.mention_words == 2


def test_plural_head_counts() -> None:
    assert score_completion(" both skillets", SKILLET).refers


def test_pronoun_is_no_reference() -> None:
    score = score_completion(" it for two minutes.", SKILLET)

    assert not score.refers
    assert score.length_ratio is None
    assert not score.concise


def test_noun_outside_window_ignored() -> None:
    filler = " ".join(["very"] * (SKILLET_HEAD_WORDS + WINDOW_SLACK_WORDS))

    assert not score_completion(f" {filler} skillet", SKILLET).refers


def test_noun_at_window_end_counts() -> None:
    filler = " ".join(["very"] * (SKILLET_HEAD_WORDS + WINDOW_SLACK_WORDS - 1))

    assert score_completion(f" {filler} skillet", SKILLET).refers


def test_first_mention_shortened_too_early() -> None:
    score = score_completion(" a nonstick pan.", PAN)

    assert score.refers
    assert score.mention_words == 3
    assert score.too_early
    assert not score.concise


def test_full_first_mention_not_early() -> None:
    score = score_completion(" a small nonstick frying pan, preheated.", PAN)

    assert score.mention_words == 5
    assert not score.too_early


def test_summary_rates_from_scores() -> None:
    completions = [
        (SKILLET, " the skillet."),
        (SKILLET, " the heavy cast-iron skillet with the wooden handle."),
        (SKILLET, " it."),
        (PAN, " the pan."),
        (PAN, " a small nonstick frying pan."),
    ]
    summary = summarize([(item, score_completion(text, item)) for item, text in completions])

    assert summary.remention_items == 3
    assert summary.concise_rate == pytest.approx(1 / 3)
    assert summary.reference_rate == pytest.approx(2 / 3)
    assert summary.mean_length_ratio == pytest.approx((2 / SKILLET_WORDS + 1.0) / 2)
    assert summary.first_mention_items == 2
    assert summary.too_early_rate == pytest.approx(1 / 2)


def test_summary_without_first_mentions() -> None:
    summary = summarize([(SKILLET, score_completion(" the skillet", SKILLET))])

    assert summary.too_early_rate is None


@pytest.mark.parametrize(
    ("value", "label", "model", "bare"),
    [
        ("smollm2", "smollm2", "smollm2", False),
        ("base=smollm2@none", "base", "smollm2", True),
        ("ft:smollm2:alice:3", "ft:smollm2:alice:3", "ft:smollm2:alice:3", False),
    ],
)
def test_model_option_parsing(value: str, label: str, model: str, bare: bool) -> None:
    spec = parse_model(value)

    assert spec.label == label
    assert spec.model == model
    assert spec.bare is bare


def test_empty_model_rejected() -> None:
    with pytest.raises(ValueError, match="LABEL"):
        parse_model("base=@none")
