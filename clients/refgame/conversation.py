"""One player's conversation with a model through the gateway, continued across the trials of a game."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from clients.refgame.gateway_client import ChatReply, GatewayClient, GatewayError

logger = logging.getLogger(__name__)

CONTEXT_LENGTH_CODE = "context_length_exceeded"


@dataclass(frozen=True)
class PlayerModel:
    """A model as one player: which id to request, as which partner, and whether to ask for the bare model."""

    model: str
    partner_id: str
    bare: bool = False

    def headers(self, session_id: str) -> dict[str, str]:
        headers = {"X-Partner-ID": self.partner_id, "X-Session-ID": session_id}
        if self.bare:
            headers["X-Adapter"] = "none"
        return headers


@dataclass
class Conversation:
    """A system prompt, finished trials and the current trial's messages, stored by the gateway as one session.

    When the model's context window is full, the oldest finished trials are dropped from the request, so a long
    game keeps going; ``trimmed_trials`` counts them.
    """

    client: GatewayClient
    player: PlayerModel
    session_id: str
    system: str
    finished: list[list[dict[str, str]]] = field(default_factory=list)
    current: list[dict[str, str]] = field(default_factory=list)
    trimmed_trials: int = 0

    def messages(self) -> list[dict[str, str]]:
        history = [message for trial in self.finished for message in trial]
        return [{"role": "system", "content": self.system}, *history, *self.current]

    def ask(self, text: str, **sampling: Any) -> ChatReply:
        """Sends ``text`` as the next user message and keeps the model's reply in the conversation."""
        self.current.append({"role": "user", "content": text})
        while True:
            try:
                reply = self.client.chat(
                    model=self.player.model,
                    messages=self.messages(),
                    headers=self.player.headers(self.session_id),
                    **sampling,
                )
            except GatewayError as error:
                if error.code != CONTEXT_LENGTH_CODE or not self.finished:
                    raise
                self.finished.pop(0)
                self.trimmed_trials += 1
                logger.info("Session %s: context window full, dropped the oldest trial", self.session_id)
                continue
            self.current.append({"role": "assistant", "content": reply.text})
            return reply

    def end_trial(self) -> None:
        """Keeps the trial's first request and final reply for later requests and drops rejected attempts.

        The gateway has stored every attempt already. Sending the corrections again made SmolLM2-135M copy their
        wording ("That message had 27 words") as its next messages.
        """
        if self.current:
            self.finished.append([self.current[0], self.current[-1]])
        self.current = []
