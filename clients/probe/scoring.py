"""Scoring one completion of a probe item, and the per-model rates.

The completion starts right where the mention should start. The scorer looks for the thing's head noun, or the
last word (the noun) of an accepted short form, within a window of words at the start of the completion. The
window is as long as the reference description up to and including its head, plus ``WINDOW_SLACK_WORDS``.
The mention then covers the words from the start of the completion up to and including that noun, plus the words
right after it that repeat, in order, the words after the head in the reference description. So repeating the
whole first mention scores the first mention's length, and "the skillet" scores 2 words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

from clients.probe.data import ProbeItem
from clients.probe.text import noun_forms, words

# How many words past the reference description's words up to its head the noun may still appear.
WINDOW_SLACK_WORDS = 3


@dataclass(frozen=True)
class Mention:
    """The words of a completion that refer to the thing."""

    text: str
    words: int


@dataclass(frozen=True)
class ItemScore:
    """The scores of one completion. ``concise`` applies to re-mention items, ``too_early`` to first mentions."""

    refers: bool
    mention: str | None
    mention_words: int | None
    reference_words: int
    length_ratio: float | None
    concise: bool
    too_early: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_mention(completion: str, item: ProbeItem) -> Mention | None:
    """Returns the completion's mention of the item's thing, or None when it does not refer to it near the start."""
    completion_words = words(completion)
    reference = words(item.first_mention)
    nouns = noun_forms(item.head).union(*(noun_forms(words(form)[-1]) for form in item.short_forms))
    head_index = reference.index(item.head)
    window = head_index + 1 + WINDOW_SLACK_WORDS

    # NOTE: the words before the noun are not parsed, so a noun that ends another phrase inside the window
    # ("the door and the hinge") also counts, with every word before it in the mention's length.
    noun_index = next((index for index, word in enumerate(completion_words[:window]) if word in nouns), None)
    if noun_index is None:
        return None

    length = noun_index + 1
    reference_tail = reference[head_index + 1 :]
    for expected in reference_tail:
        if length >= len(completion_words) or completion_words[length] != expected:
            break
        length += 1
    return Mention(text=" ".join(completion_words[:length]), words=length)


def short_form_limit(item: ProbeItem) -> int:
    """Returns the word count of the longest accepted short form: a first mention this short is shortened."""
    return max(len(words(form)) for form in item.short_forms)


def score_completion(completion: str, item: ProbeItem) -> ItemScore:
    """Scores one completion of ``item``."""
    reference_words = len(words(item.first_mention))
    mention = find_mention(completion, item)
    if mention is None:
        return ItemScore(
            refers=False,
            mention=None,
            mention_words=None,
            reference_words=reference_words,
            length_ratio=None,
            concise=False,
            too_early=False,
        )

    shorter = mention.words < reference_words
    return ItemScore(
        refers=True,
        mention=mention.text,
        mention_words=mention.words,
        reference_words=reference_words,
        length_ratio=mention.words / reference_words,
        concise=item.kind == "remention" and shorter,
        too_early=item.kind == "first_mention" and mention.words <= short_form_limit(item),
    )


@dataclass(frozen=True)
class ModelSummary:
    """One model's rates. A rate over no items is None."""

    remention_items: int
    concise_rate: float | None
    reference_rate: float | None
    mean_length_ratio: float | None
    first_mention_items: int
    too_early_rate: float | None
    first_mention_reference_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize(pairs: list[tuple[ProbeItem, ItemScore]]) -> ModelSummary:
    """Aggregates one model's scores. The mean length ratio is over the re-mentions that refer to the thing."""
    rementions = [score for item, score in pairs if item.kind == "remention"]
    firsts = [score for item, score in pairs if item.kind == "first_mention"]
    ratios = [score.length_ratio for score in rementions if score.length_ratio is not None]
    return ModelSummary(
        remention_items=len(rementions),
        concise_rate=_rate([score.concise for score in rementions]),
        reference_rate=_rate([score.refers for score in rementions]),
        mean_length_ratio=fmean(ratios) if ratios else None,
        first_mention_items=len(firsts),
        too_early_rate=_rate([score.too_early for score in firsts]),
        first_mention_reference_rate=_rate([score.refers for score in firsts]),
    )
