"""The speaker: a served model that describes the target item without forbidden words, asked again on a violation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from clients.refgame.contexts import Context
from clients.refgame.conversation import Conversation
from clients.refgame.forbidden import find_violations, forbidden_words
from clients.refgame.logit_bias import LogitBias, Tokenizer, build_logit_bias

logger = logging.getLogger(__name__)

MAX_WORDS = 15
SPEAKER_SYSTEM_PROMPT = (
    "You play a guessing game with the same partner for many rounds. Each round, describe the target object in "
    "fewer than {max_words} words without saying its name or the other objects' names. Reply with the description "
    "only."
)


@dataclass
class SpeakerTurn:
    """The message the listener gets for one trial, and what it took to get it."""

    message: str
    attempts: int
    violations: list[str] = field(default_factory=list)
    too_long: bool = False
    adapter: str | None = None
    rejected: list[str] = field(default_factory=list)


def clean_message(text: str) -> str:
    """Keeps the first non-empty line without a "Message:" label or surrounding quotes."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.lower().startswith("message:"):
        first = first[len("message:") :].strip()
    return first.strip("\"'“”‘’ ").strip()


def word_count(message: str) -> int:
    return len(message.split())


def _problems(message: str, violations: list[str], max_words: int) -> str | None:
    if not message:
        return "was empty"
    parts = []
    if violations:
        parts.append("used the forbidden words " + ", ".join(violations))
    if word_count(message) >= max_words:
        parts.append(f"had {word_count(message)} words; use fewer than {max_words}")
    return " and ".join(parts) or None


class Speaker:
    """Plays the speaker's side of one game; ``tokenizer`` is None when the model's tokenizer is unavailable."""

    def __init__(
        self,
        conversation: Conversation,
        context: Context,
        tokenizer: Tokenizer | None,
        *,
        temperature: float,
        max_tokens: int,
        max_retries: int,
        bias_cap: int,
        max_words: int = MAX_WORDS,
    ) -> None:
        self.conversation = conversation
        self.context = context
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.max_words = max_words
        self.feedback = ""
        # Every item's words are forbidden in every trial, so one map serves the whole game.
        self.bias: LogitBias | None = None
        if tokenizer is not None:
            self.bias = build_logit_bias(forbidden_words(context), tokenizer, cap=bias_cap)

    def _instruction(self, target: str) -> str:
        # Small models respond to the last sentence they read, so the request to describe comes last.
        items = ", ".join(self.context.words)
        return f"{self.feedback}Objects: {items}. Describe the {target} without saying {self._forbidden_list()}."

    def _forbidden_list(self) -> str:
        words = forbidden_words(self.context)
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"

    def describe(self, target: str) -> SpeakerTurn:
        """Gets a message for ``target``, asking again up to ``max_retries`` times while it breaks a rule."""
        sampling = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "logit_bias": self.bias.bias if self.bias and self.bias.bias else None,
        }
        request = self._instruction(target)
        turn = SpeakerTurn(message="", attempts=0)
        while True:
            reply = self.conversation.ask(request, **sampling)
            turn.attempts += 1
            turn.adapter = reply.adapter
            turn.message = clean_message(reply.text)
            turn.violations = find_violations(turn.message, self.context)
            turn.too_long = word_count(turn.message) >= self.max_words
            problem = _problems(turn.message, turn.violations, self.max_words)
            if problem is None or turn.attempts > self.max_retries:
                break
            turn.rejected.append(turn.message)
            request = f"That message {problem}. Describe the {target} again without saying {self._forbidden_list()}."

        self.conversation.end_trial()
        return turn

    def give_feedback(self, picked: str | None, target: str) -> None:
        """Stores the listener's result; it opens the next trial's instruction."""
        if picked == target:
            self.feedback = f"Your partner picked the {picked}: correct. "
        elif picked is None:
            self.feedback = f"Your partner could not pick an item; the target was the {target}. "
        else:
            self.feedback = f"Your partner picked the {picked}: wrong, it was the {target}. "
