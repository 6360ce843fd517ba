"""Building a ``logit_bias`` map that keeps a speaker from writing forbidden words.

Policy, for each forbidden word in priority order (the target's words first):

- variants: the word, capitalised, each with and without a leading space, and the same for its regular plurals;
- a variant that is one token of the served tokenizer: that token is banned;
- a variant of several tokens: only its first piece is banned. That piece, without its leading space, must be at
  least ``MIN_PIECE_LETTERS`` letters long and cover at least half of the word. So " tea" is banned when a
  tokenizer splits " teapot" into " tea" and "pot", but " m" of " mug" is not. Banning short generic pieces would
  block many unrelated words, so the remaining cases are caught by checking the message and asking again;
- the map stops growing at ``cap`` entries, so requests stay small; what did not fit is counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from clients.refgame.forbidden import plural_forms

logger = logging.getLogger(__name__)

BAN_BIAS = -100
DEFAULT_BIAS_CAP = 300
MIN_PIECE_LETTERS = 3


class Tokenizer(Protocol):
    """Encodes text without special tokens and decodes ids, as the served model's tokenizer does."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class LogitBias:
    """The map to send and, for each banned token id, the text of that token."""

    bias: dict[str, int] = field(default_factory=dict)
    pieces: dict[int, str] = field(default_factory=dict)
    left_out: int = 0


def word_variants(word: str) -> list[str]:
    """Returns the spellings of ``word`` to ban: as is and capitalised, plural forms, with and without a space."""
    spellings: list[str] = []
    for form in [word, *plural_forms(word)]:
        for cased in (form, form.capitalize()):
            spellings.extend([" " + cased, cased])
    return list(dict.fromkeys(spellings))


def _piece_to_ban(variant: str, ids: list[int], tokenizer: Tokenizer) -> int | None:
    if len(ids) == 1:
        return ids[0]
    if not ids:
        return None
    piece = tokenizer.decode([ids[0]]).strip().lower()
    word = variant.strip().lower()
    long_enough = len(piece) >= MIN_PIECE_LETTERS and 2 * len(piece) >= len(word)
    return ids[0] if long_enough and word.startswith(piece) else None


def build_logit_bias(words: list[str], tokenizer: Tokenizer, *, cap: int = DEFAULT_BIAS_CAP) -> LogitBias:
    """Returns the ``logit_bias`` map that bans ``words`` (most important first) under the policy above."""
    result = LogitBias()
    for word in words:
        for variant in word_variants(word):
            token = _piece_to_ban(variant, tokenizer.encode(variant), tokenizer)
            if token is None or str(token) in result.bias:
                continue
            if len(result.bias) >= cap:
                result.left_out += 1
                continue
            result.bias[str(token)] = BAN_BIAS
            result.pieces[token] = tokenizer.decode([token])
    if result.left_out:
        logger.warning("Logit bias: cap of %d entries reached; %d more tokens were not banned", cap, result.left_out)
    return result
