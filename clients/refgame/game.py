"""One repeated reference game: every item is the target once per repetition, in a seeded order."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from clients.refgame.contexts import Context
from clients.refgame.listeners import Listener, PastMessage
from clients.refgame.records import TrialRecord
from clients.refgame.speaker import Speaker, word_count

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GameSetup:
    """Identifiers of a game that each of its trial records carries."""

    speaker_label: str
    model: str
    game: int
    session_id: str
    repetitions: int


def trial_order(context: Context, repetitions: int, rng: random.Random) -> list[tuple[int, str]]:
    """Returns (repetition, target) pairs: each item once per repetition, shuffled within each repetition."""
    order = []
    for repetition in range(1, repetitions + 1):
        targets = context.words
        rng.shuffle(targets)
        order.extend((repetition, target) for target in targets)
    return order


def play_game(
    setup: GameSetup,
    context: Context,
    speaker: Speaker,
    listener: Listener,
    rng: random.Random,
    *,
    count_tokens: Callable[[str], int | None],
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> list[TrialRecord]:
    """Plays all trials of one game; both players learn after each trial whether the listener was right."""
    history: list[PastMessage] = []
    records: list[TrialRecord] = []
    for index, (repetition, target) in enumerate(trial_order(context, setup.repetitions, rng)):
        turn = speaker.describe(target)
        shown = context.words
        rng.shuffle(shown)
        pick = listener.pick(shown, turn.message, history)
        picked = shown[pick.index] if pick.index is not None else None
        correct = picked == target

        speaker.give_feedback(picked, target)
        listener.reveal(target, correct)
        history.append(PastMessage(message=turn.message, target=target))

        record = TrialRecord(
            speaker=setup.speaker_label,
            model=setup.model,
            game=setup.game,
            context_id=context.id,
            repetition=repetition,
            trial=index,
            target=target,
            shown=shown,
            message=turn.message,
            words=word_count(turn.message),
            tokens=count_tokens(turn.message),
            attempts=turn.attempts,
            violations=turn.violations,
            too_long=turn.too_long,
            rejected=turn.rejected,
            pick=picked,
            correct=correct,
            listener_output=pick.raw,
            adapter=turn.adapter,
            session_id=setup.session_id,
        )
        if turn.violations:
            logger.info("Session %s: trial %d kept forbidden words %s", setup.session_id, index, turn.violations)
        records.append(record)
        if on_trial is not None:
            on_trial(record)
    return records
