"""Word splitting and head-noun matching shared by the probe's data checks and its scoring."""

from __future__ import annotations

import re

# A word is a run of letters or digits, with inner apostrophes and hyphens: "cast-iron", "chef's", "40-litre".
WORD_PATTERN = re.compile(r"\w+(?:['’-]\w+)*")


def words(text: str) -> list[str]:
    """Splits ``text`` into lower-case words, dropping punctuation."""
    return [word.casefold() for word in WORD_PATTERN.findall(text)]


def noun_forms(noun: str) -> set[str]:
    """Returns the forms of ``noun`` that count as the same noun: itself, its regular plurals and its possessive."""
    forms = {noun, f"{noun}s", f"{noun}es", f"{noun}'s", f"{noun}’s"}
    if noun.endswith("y"):
        forms.add(f"{noun[:-1]}ies")
    return forms
