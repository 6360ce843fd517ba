"""Running reference games for one or more speakers against a gateway: ``run_refgame(config) -> results``."""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clients.refgame.config import RefGameConfig, SpeakerSpec
from clients.refgame.contexts import Context, load_contexts
from clients.refgame.conversation import Conversation, PlayerModel
from clients.refgame.game import GameSetup, play_game
from clients.refgame.gateway_client import GatewayClient, GatewayTokenizer
from clients.refgame.listeners import (
    EMBEDDING_LISTENER,
    LISTENER_SYSTEM_PROMPT,
    EmbeddingListener,
    Listener,
    ModelListener,
)
from clients.refgame.metrics import aggregate_metrics, game_metrics
from clients.refgame.outputs import check_output_dir, write_outputs
from clients.refgame.records import TrialRecord
from clients.refgame.speaker import SPEAKER_SYSTEM_PROMPT, Speaker

logger = logging.getLogger(__name__)

ITEMS_PER_GAME = 4


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
    player = PlayerModel(model=config.listener, partner_id=f"{config.partner_id}-listener")
    conversation = Conversation(client, player, session_id=f"{session_id}-listener", system=LISTENER_SYSTEM_PROMPT)
    return ModelListener(conversation)


def _token_counter(client: GatewayClient, spec: SpeakerSpec, partner_id: str) -> GatewayTokenizer | None:
    """Returns the speaker's tokenizer through the gateway, or None when the model is not the local one."""
    if client.tokenize(spec.model, "probe", partner_id) is None:
        logger.warning("Speaker %s: model %s is not local, so tokens are not counted", spec.label, spec.model)
        return None
    return GatewayTokenizer(client, spec.model, partner_id)


def _play_speaker(
    config: RefGameConfig,
    client: GatewayClient,
    spec: SpeakerSpec,
    contexts: list[Context],
    run_id: str,
    listener: Listener | None,
    on_trial: Callable[[TrialRecord], None],
) -> dict[str, Any]:
    tokenizer = _token_counter(client, spec, config.partner_id)
    player = PlayerModel(model=spec.model, partner_id=config.partner_id, bare=spec.bare)
    system = SPEAKER_SYSTEM_PROMPT.format(max_words=config.max_words)
    trials: list[TrialRecord] = []
    games = []
    for game_index, context in enumerate(contexts):
        session_id = f"refgame-{run_id}-{spec.slug}-g{game_index}"
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
        trials.extend(records)

        metrics = game_metrics(records)
        metrics.update(
            game=game_index,
            context_id=context.id,
            session_id=session_id,
            logit_bias_entries=len(speaker.bias.bias) if speaker.bias else None,
            trimmed_trials=conversation.trimmed_trials,
        )
        games.append(metrics)

    note = None if tokenizer is not None else f"tokens unavailable: {spec.model} is not the gateway's local model"
    return {
        "label": spec.label,
        "model": spec.model,
        "bare": spec.bare,
        "tokens_available": tokenizer is not None,
        "logit_bias": tokenizer is not None,
        "note": note,
        "games": games,
        "aggregate": aggregate_metrics(games),
        "trials": trials,
    }


def run_refgame(config: RefGameConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Plays ``config.games`` games per speaker and returns config, per-trial records and per-game and aggregate
    measures; writes the output files when ``config.output_dir`` is set.

    Raises ContextsFormatError, GatewayUnreachableError, UnknownModelError or OutputDirError before any game starts
    when the inputs are unusable, and GatewayError when the gateway fails during a game.
    """
    contexts = choose_contexts(load_contexts(config.contexts_path), config.games, config.seed)
    if config.output_dir is not None:
        check_output_dir(config.output_dir)

    client = GatewayClient(config.base_url)
    try:
        for spec in config.speakers:
            client.check_model(spec.model, config.partner_id)
        if config.listener != EMBEDDING_LISTENER:
            client.check_model(config.listener, f"{config.partner_id}-listener")
        listener = EmbeddingListener() if config.listener == EMBEDDING_LISTENER else None
        results = _play_all(config, client, contexts, listener, show_progress)
    finally:
        client.close()

    if config.output_dir is not None:
        write_outputs(results, config.output_dir)
    return results


def _play_all(
    config: RefGameConfig,
    client: GatewayClient,
    contexts: list[Context],
    listener: Listener | None,
    show_progress: bool,
) -> dict[str, Any]:
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    started = time.time()
    total = len(config.speakers) * len(contexts) * config.repetitions * ITEMS_PER_GAME
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    speakers = []
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("reference game trials", total=total)
        for spec in config.speakers:
            progress.update(task, description=f"speaker {spec.label}")
            speakers.append(
                _play_speaker(config, client, spec, contexts, run_id, listener, lambda _: progress.advance(task))
            )

    trials = [trial.to_dict() for speaker in speakers for trial in speaker.pop("trials")]
    return {
        "run_id": run_id,
        "started_at": started,
        "finished_at": time.time(),
        "config": config.to_dict(),
        "speakers": speakers,
        "trials": trials,
    }
