"""Forbidden-word checks and logit_bias maps of the reference game."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from clients.refgame.config import parse_speaker
from clients.refgame.contexts import Context, Item
from clients.refgame.forbidden import find_violations, forbidden_words, plural_forms
from clients.refgame.logit_bias import BAN_BIAS, build_logit_bias, word_variants
from clients.refgame.speaker import clean_message

KITCHEN = Context(
    id="kitchen",
    category="household",
    items=(Item("teapot", ("tea", "pot")), Item("mug"), Item("knife", ("knives",)), Item("ant")),
)


class HuggingFaceTokenizer:
    """The served model's tokenizer, used directly instead of through the gateway."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> HuggingFaceTokenizer:
    return HuggingFaceTokenizer(AutoTokenizer.from_pretrained(tiny_model_path))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("the brown one with a spout", []),
        ("Brew TEA in it", ["tea"]),
        ("the one with two pots", ["pot"]),
        ("the Teapots", ["teapot"]),
        ("a teapotlike thing", ["teapot"]),
        ("the mug's handle", ["mug"]),
        ("sharp, like knives", ["knives"]),
        ("pottery from a giant", []),
    ],
)
def test_violations_found_in_messages(message: str, expected: list[str]) -> None:
    assert find_violations(message, KITCHEN) == expected


TOYS = Context(
    id="toys",
    category="toys",
    items=(Item("yo-yo"), Item("kite"), Item("ice cream"), Item("t-shirt")),
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("the yo-yo", ["yo-yo"]),
        ("a T-shirt please", ["t-shirt"]),
        ("two Yo-Yos", ["yo-yo"]),
        ("the yo-yo's string", ["yo-yo"]),
        ("a yo yo", ["yo-yo"]),
        ("a yoyo", ["yo-yo"]),
        ("clean tshirts", ["t-shirt"]),
        ("a shirt you wear", []),
        ("yo, over there", []),
    ],
)
def test_hyphenated_items_found(message: str, expected: list[str]) -> None:
    assert find_violations(message, TOYS) == expected


def test_forbidden_words_list_items_first() -> None:
    assert forbidden_words(KITCHEN) == ["teapot", "mug", "knife", "ant", "tea", "pot", "knives"]


def test_plural_forms_cover_regular_plurals() -> None:
    assert plural_forms("box") == ["boxs", "boxes"]
    assert plural_forms("cherry") == ["cherrys", "cherries"]


def test_word_variants_cover_case_and_space() -> None:
    variants = word_variants("mug")

    for expected in ("mug", " mug", "Mug", " Mug", " mugs", "Mugs"):
        assert expected in variants


def test_single_token_words_banned(tokenizer: HuggingFaceTokenizer) -> None:
    result = build_logit_bias(["knife"], tokenizer)
    knife_ids = tokenizer.encode(" knife")

    assert len(knife_ids) == 1
    assert result.bias[str(knife_ids[0])] == BAN_BIAS


def test_banned_ids_decode_to_forbidden_pieces(tokenizer: HuggingFaceTokenizer) -> None:
    words = forbidden_words(KITCHEN)
    spellings = [variant.strip().lower() for word in words for variant in word_variants(word)]
    result = build_logit_bias(words, tokenizer)

    assert result.bias
    for token in result.bias:
        piece = tokenizer.decode([int(token)]).strip().lower()
        assert any(spelling.startswith(piece) for spelling in spellings), piece


def test_short_first_pieces_not_banned(tokenizer: HuggingFaceTokenizer) -> None:
    pieces = [tokenizer.decode([ids[0]]) for ids in (tokenizer.encode(" mug"), tokenizer.encode(" teapot"))]
    result = build_logit_bias(["mug", "teapot"], tokenizer)

    assert pieces == [" m", " te"]
    for piece in pieces:
        assert piece not in result.pieces.values()


def test_bias_cap_limits_entries(tokenizer: HuggingFaceTokenizer) -> None:
    result = build_logit_bias(forbidden_words(KITCHEN), tokenizer, cap=3)

    assert len(result.bias) == 3
    assert result.left_out > 0


def test_target_words_come_first_under_cap(tokenizer: HuggingFaceTokenizer) -> None:
    result = build_logit_bias(["knife", "tea"], tokenizer, cap=1)

    assert list(result.bias) == [str(tokenizer.encode(" knife")[0])]


@pytest.mark.parametrize(
    ("value", "label", "model", "bare"),
    [
        ("smollm2", "smollm2", "smollm2", False),
        ("base=smollm2@none", "base", "smollm2", True),
        ("smollm2@none", "smollm2@none", "smollm2", True),
        ("tuned=ft:smollm2:alice:v2", "tuned", "ft:smollm2:alice:v2", False),
    ],
)
def test_speaker_specs_parsed(value: str, label: str, model: str, bare: bool) -> None:
    spec = parse_speaker(value)

    assert (spec.label, spec.model, spec.bare) == (label, model, bare)


def test_empty_speaker_model_rejected() -> None:
    with pytest.raises(ValueError, match="expected \\[LABEL=\\]MODEL"):
        parse_speaker("base=@none")


def test_clean_message_strips_labels() -> None:
    assert clean_message('Message: "the brown one"\nmore text') == "the brown one"
