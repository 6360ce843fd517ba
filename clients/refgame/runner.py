"""Running reference games for one or more speakers against a gateway: ``run_refgame(config) -> results``."""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clients.options import LISTENER_PARTNER_SUFFIX
from clients.refgame.config import RefGameConfig, SpeakerSpec
from clients.refgame.contexts import Context, load_contexts
from clients.refgame.conversation import Conversation, PlayerModel
from clients.refgame.game import GameSetup, play_game
from clients.refgame.gateway_client import GatewayClient, GatewayError, GatewayTokenizer
from clients.refgame.listeners import (
    EMBEDDING_LISTENER,
    LISTENER_SYSTEM_PROMPT,
    EmbeddingListener,
    Listener,
    ModelListener,
)
from clients.refgame.metrics import aggregate_metrics, game_metrics
from clients.refgame.outputs import OutputDirError, check_output_dir, write_outputs
from clients.refgame.records import TrialRecord
from clients.refgame.speaker import SPEAKER_SYSTEM_PROMPT, Speaker

logger = logging.getLogger(__name__)

ITEMS_PER_GAME = 4
# Session ids may have 128 characters, and the rest of a refgame session id, "-listener" included, takes about 50.
MAX_SLUG_LENGTH = 48


def choose_contexts(contexts: list[Context], games: int, seed: int) -> list[Context]:
    """Returns ``games`` contexts in a seeded order, each used once before any is used again."""
    rng = random.Random(seed)
    chosen: list[Context] = []
    while len(chosen) < games:
        batch = list(contexts)
        rng.shuffle(batch)
        chosen.extend(batch[: games - len(chosen)])
    return chosen


def _listener_for(config: RefGameConfig, client: GatewayClient, session_id: str, shared: Listener | None) -> Listener:
    if config.listener == EMBEDDING_LISTENER:
        assert shared is not None
        return shared
    player = PlayerModel(model=config.listener, partner_id=config.partner_id + LISTENER_PARTNER_SUFFIX)
    conversation = Conversation(client, player, session_id=f"{session_id}-listener", system=LISTENER_SYSTEM_PROMPT)
    return ModelListener(conversation)


def _token_counter(client: GatewayClient, spec: SpeakerSpec, partner_id: str) -> GatewayTokenizer | None:
    """Returns the speaker's tokenizer through the gateway, or None when the model is not the local one."""
    if client.tokenize(spec.model, "probe", partner_id) is None:
        logger.warning("Speaker %s: model %s is not local, so tokens are not counted", spec.label, spec.model)
        return None
    return GatewayTokenizer(client, spec.model, partner_id)


@dataclass
class SpeakerResults:
    """One speaker's finished games and their trial records, filled in as the games end."""

    spec: SpeakerSpec
    tokens_available: bool = False
    games: list[dict[str, Any]] = field(default_factory=list)
    trials: list[TrialRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        note = None if self.tokens_available else f"tokens unavailable: {spec.model} is not the gateway's local model"
        return {
            "label": spec.label,
            "model": spec.model,
            "bare": spec.bare,
            "tokens_available": self.tokens_available,
            "logit_bias": self.tokens_available,
            "note": note,
            "games": self.games,
            "aggregate": aggregate_metrics(self.games),
        }


def session_id_for(run_id: str, speaker_index: int, spec: SpeakerSpec, game_index: int) -> str:
    """Returns the X-Session-ID of one game. The speaker's index keeps ids unique when two labels give one slug."""
    return f"refgame-{run_id}-s{speaker_index}-{spec.slug[:MAX_SLUG_LENGTH]}-g{game_index}"


def _play_speaker(
    config: RefGameConfig,
    client: GatewayClient,
    speaker_index: int,
    contexts: list[Context],
    run_id: str,
    listener: Listener | None,
    played: SpeakerResults,
    on_trial: Callable[[TrialRecord], None],
) -> None:
    spec = played.spec
    tokenizer = _token_counter(client, spec, config.partner_id)
    played.tokens_available = tokenizer is not None
    player = PlayerModel(model=spec.model, partner_id=config.partner_id, bare=spec.bare)
    system = SPEAKER_SYSTEM_PROMPT.format(max_words=config.max_words)
    for game_index, context in enumerate(contexts):
        session_id = session_id_for(run_id, speaker_index, spec, game_index)
        conversation = Conversation(client, player, session_id=session_id, system=system)
        speaker = Speaker(
            conversation,
            context,
            tokenizer,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            max_retries=config.max_retries,
            bias_cap=config.bias_cap,
            max_words=config.max_words,
        )
        setup = GameSetup(spec.label, spec.model, game_index, session_id, config.repetitions)
        # Every speaker gets the same trial order and item order for the same game, so speakers are comparable.
        rng = random.Random(f"{config.seed}-{game_index}")
        count = (lambda text: len(tokenizer.encode(text))) if tokenizer is not None else (lambda text: None)
        game_listener = _listener_for(config, client, session_id, listener)
        records = play_game(setup, context, speaker, game_listener, rng, count_tokens=count, on_trial=on_trial)

        metrics = game_metrics(records)
        metrics.update(
            game=game_index,
            context_id=context.id,
            session_id=session_id,
            logit_bias_entries=len(speaker.bias.bias) if speaker.bias else None,
            trimmed_trials=conversation.trimmed_trials,
        )
        played.trials.extend(records)
        played.games.append(metrics)


def run_refgame(config: RefGameConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Plays ``config.games`` games per speaker and returns config, per-trial records and per-game and aggregate
    measures; writes the output files when ``config.output_dir`` is set.

    Raises ContextsFormatError, GatewayUnreachableError, UnknownModelError or OutputDirError before any game starts
    when the inputs are unusable, and GatewayError when the gateway fails during a game. In that case the output
    files still get the games that finished before the failure, with ``"complete": false`` and the error in
    results.json.
    """
    contexts = choose_contexts(load_contexts(config.contexts_path), config.games, config.seed)
    if config.output_dir is not None:
        check_output_dir(config.output_dir)

    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    started = time.time()
    played: list[SpeakerResults] = []
    client = GatewayClient(config.base_url)
    try:
        for spec in config.speakers:
            client.check_model(spec.model, config.partner_id)
        if config.listener != EMBEDDING_LISTENER:
            client.check_model(config.listener, config.partner_id + LISTENER_PARTNER_SUFFIX)
        listener = EmbeddingListener() if config.listener == EMBEDDING_LISTENER else None
        _play_all(config, client, contexts, run_id, listener, played, show_progress)
    except GatewayError as error:
        _write_partial(config, _results(config, run_id, started, played, error))
        raise
    finally:
        client.close()

    results = _results(config, run_id, started, played, None)
    if config.output_dir is not None:
        write_outputs(results, config.output_dir)
    return results


def _play_all(
    config: RefGameConfig,
    client: GatewayClient,
    contexts: list[Context],
    run_id: str,
    listener: Listener | None,
    played: list[SpeakerResults],
    show_progress: bool,
) -> None:
    """Plays every speaker's games, appending to ``played`` as they finish, so a failure keeps the earlier games."""
    total = len(config.speakers) * len(contexts) * config.repetitions * ITEMS_PER_GAME
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("reference game trials", total=total)

        def advance(_: TrialRecord) -> None:
            progress.advance(task)

        for speaker_index, spec in enumerate(config.speakers):
            progress.update(task, description=f"speaker {spec.label}")
            played.append(SpeakerResults(spec))
            _play_speaker(config, client, speaker_index, contexts, run_id, listener, played[-1], advance)


def _results(
    config: RefGameConfig, run_id: str, started: float, played: list[SpeakerResults], error: GatewayError | None
) -> dict[str, Any]:
    """Returns the results of the finished games; ``error`` is the failure that ended the run early, if any."""
    finished = [speaker for speaker in played if speaker.games]
    return {
        "run_id": run_id,
        "started_at": started,
        "finished_at": time.time(),
        "complete": error is None,
        "error": None if error is None else str(error),
        "config": config.to_dict(),
        "speakers": [speaker.to_dict() for speaker in finished],
        "trials": [trial.to_dict() for speaker in finished for trial in speaker.trials],
    }


def _write_partial(config: RefGameConfig, results: dict[str, Any]) -> None:
    """Writes the games that finished before a gateway failure; an unwritable folder is logged, not raised."""
    games = sum(len(speaker["games"]) for speaker in results["speakers"])
    if config.output_dir is None or games == 0:
        return
    try:
        write_outputs(results, config.output_dir)
    except OutputDirError as error:
        logger.error("Reference game %s: the %d finished games were not written: %s", results["run_id"], games, error)
        return
    logger.warning(
        'Reference game %s stopped early; the %d finished games are in %s, marked "complete": false',
        results["run_id"],
        games,
        config.output_dir,
    )
