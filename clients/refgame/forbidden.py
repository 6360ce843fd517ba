"""Forbidden words of a reference game, and finding them in a message.

Forbidden in every trial of a game: each context item's word and the forbidden words listed for it (parts such as
"tea" and "pot" for "teapot", irregular plurals). A message word breaks the rule when, ignoring case, it equals a
forbidden word or a regular plural or possessive of one ("pots", "pot's"). It also breaks the rule when it contains
a whole item word of five letters or more ("teapotlike"). Shorter forbidden parts are not searched inside longer
words, so "pottery" does not break the rule for "pot". A hyphenated word ("yo-yo") breaks the rule as a whole: its
parts in a row ("yo-yo", "yo yo") or joined into one word ("yoyo").
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


def _uses_term(words: list[str], end: int, term: str) -> bool:
    """Returns whether the message words up to index ``end`` end with ``term``, its plural or its possessive.

    A hyphenated term ("yo-yo", "t-shirt") matches its parts as consecutive words, since messages are split at
    hyphens, and also its parts written as one word ("yoyo", "tshirt").
    """
    parts = message_words(term)
    bases = _base_forms(words[end])
    if "".join(parts) in bases:
        return True
    start = end - len(parts) + 1
    if len(parts) < 2 or start < 0:
        return False
    return words[start:end] == parts[:-1] and parts[-1] in bases


def find_violations(message: str, context: Context) -> list[str]:
    """Returns the forbidden words (as listed) that ``message`` uses, in order of first use, without repeats."""
    forbidden = forbidden_words(context)
    # Item words as one run of letters ("icecream", "tshirt"), searched inside longer message words.
    joined = [(_letters_only(item.word), item.word) for item in context.items]
    contained = [(letters, word) for letters, word in joined if len(letters) >= MIN_CONTAINED_LENGTH]
    found: list[str] = []
    words = message_words(message)
    for index, word in enumerate(words):
        hits = [term for term in forbidden if _uses_term(words, index, term)]
        hits += [item for letters, item in contained if letters in word.replace("'", "")]
        found.extend(hit for hit in hits if hit not in found)
    return found


def _letters_only(word: str) -> str:
    return "".join(character for character in word if character.isalpha())
