"""Forbidden words of a reference game, and finding them in a message.

Forbidden in every trial of a game: each context item's word and the forbidden words listed for it (parts such as
"tea" and "pot" for "teapot", irregular plurals). A message word breaks the rule when, ignoring case, it equals a
forbidden word or a regular plural or possessive of one ("pots", "pot's"). It also breaks the rule when it contains
a whole item word of five letters or more ("teapotlike"). Shorter forbidden parts are not searched inside longer
words, so "pottery" does not break the rule for "pot".
"""

from __future__ import annotations

import re

from clients.refgame.contexts import Context

# Item words shorter than this are only matched as whole words, so "ant" does not flag "giant".
MIN_CONTAINED_LENGTH = 5
_WORD_SPLIT = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def message_words(text: str) -> list[str]:
    """Splits a message into lowercase words; hyphens, digits and punctuation separate words."""
    return [word.lower() for word in _WORD_SPLIT.findall(text)]


def plural_forms(word: str) -> list[str]:
    """Returns the regular plural spellings of ``word`` ("box" -> "boxes", "cherry" -> "cherries")."""
    forms = [word + "s"]
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.append(word + "es")
    if len(word) > 2 and word.endswith("y") and word[-2] not in "aeiou":
        forms.append(word[:-1] + "ies")
    return forms


def forbidden_words(context: Context) -> list[str]:
    """Returns every forbidden word of a game in a fixed order: item words first, then the listed extras."""
    words: list[str] = []
    for item in context.items:
        words.extend(item.word.split())
    for item in context.items:
        words.extend(part for extra in item.forbidden for part in extra.split())
    return list(dict.fromkeys(words))


def _base_forms(word: str) -> set[str]:
    forms = {word}
    if word.endswith("'s"):
        forms.add(word[:-2])
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and len(word) > 2:
        forms.add(word[:-1])
    return forms


def find_violations(message: str, context: Context) -> list[str]:
    """Returns the forbidden words (as listed) that ``message`` uses, in order of first use, without repeats."""
    forbidden = forbidden_words(context)
    item_words = [item.word.replace(" ", "") for item in context.items if len(item.word) >= MIN_CONTAINED_LENGTH]
    found: list[str] = []
    for word in message_words(message):
        bases = _base_forms(word)
        hits = [term for term in forbidden if term in bases]
        hits += [item for item in item_words if item in word.replace("'", "")]
        found.extend(hit for hit in hits if hit not in found)
    return found
