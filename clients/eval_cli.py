"""The ``convention-gateway eval`` commands: measurements of convention formation against a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clients.probe import config as probe_config

eval_app = typer.Typer(
    help="Measure convention formation against a running gateway (reference game, re-mention probe).",
    no_args_is_help=True,
)


@eval_app.command("refgame")
def refgame(
    speaker: Annotated[
        list[str],
        typer.Option(
            help="Served model id, optionally as LABEL=MODEL; append '@none' for the bare model. Repeat to compare."
        ),
    ],
    listener: Annotated[str, typer.Option(help="'embedding' (offline all-MiniLM-L6-v2) or a served model id.")],
    contexts: Annotated[
        Path | None, typer.Option(help="Contexts file, .json or .csv (default: the 48 shipped contexts).")
    ] = None,
    games: Annotated[int, typer.Option(min=1, help="Games per speaker, each on another context.")] = 1,
    repetitions: Annotated[int, typer.Option(min=1, help="Times each item is the target in a game.")] = 6,
    output: Annotated[
        Path | None, typer.Option(help="Folder for results.json, trials.csv, summary.csv and refgame.png.")
    ] = None,
    base_url: Annotated[str, typer.Option(help="The gateway's OpenAI base URL.")] = "http://127.0.0.1:8000/v1",
    partner: Annotated[
        str, typer.Option(help="Partner id of the speaker; the model listener is <partner>-listener.")
    ] = "refgame",
    seed: Annotated[int, typer.Option(help="Seed of the context choice and of the trial and item orders.")] = 0,
    temperature: Annotated[float, typer.Option(min=0, max=2, help="Sampling temperature of the speaker.")] = 0.7,
    max_retries: Annotated[int, typer.Option(min=0, help="Times a speaker is asked again after breaking a rule.")] = 2,
) -> None:
    """Play the repeated reference game: do a speaker's messages get shorter while the listener stays right?"""
    from clients.refgame.cli import run_command

    run_command(
        speakers=speaker,
        listener=listener,
        contexts=contexts,
        games=games,
        repetitions=repetitions,
        output=output,
        base_url=base_url,
        partner=partner,
        seed=seed,
        temperature=temperature,
        max_retries=max_retries,
    )


@eval_app.command("probe")
def probe(
    model: Annotated[
        list[str],
        typer.Option(
            help="Served model id, optionally as LABEL=MODEL; append '@none' for the bare model. Repeat to compare."
        ),
    ],
    dialogues: Annotated[
        Path | None, typer.Option(help="Probe items, JSON Lines (default: the shipped re-mention probe).")
    ] = None,
    partner: Annotated[
        str, typer.Option(help="Partner id sent as X-Partner-ID; it picks the partner's adapter.")
    ] = probe_config.DEFAULT_PARTNER_ID,
    output: Annotated[Path | None, typer.Option(help="Folder for probe.json and probe.csv.")] = None,
    base_url: Annotated[str, typer.Option(help="The gateway's OpenAI base URL.")] = probe_config.DEFAULT_BASE_URL,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens generated after each forced prefix.")
    ] = probe_config.DEFAULT_MAX_TOKENS,
    limit: Annotated[int | None, typer.Option(min=1, help="Probe only the first N items of the file.")] = None,
) -> None:
    """Complete forced reply prefixes: are re-mentions short, and first mentions still full?"""
    from clients.probe.cli import run_command

    run_command(
        models=model,
        dialogues=dialogues,
        partner=partner,
        output=output,
        base_url=base_url,
        max_tokens=max_tokens,
        limit=limit,
    )


@eval_app.command("compare")
def compare(
    partner: Annotated[str, typer.Option(help="Partner id whose adapter is compared; it plays every game.")],
    model: Annotated[str, typer.Option(help="The gateway's local model name.")] = "smollm2-135m-instruct",
    listener: Annotated[str, typer.Option(help="'embedding' (offline all-MiniLM-L6-v2) or a served model id.")] = (
        "embedding"
    ),
    games: Annotated[int, typer.Option(min=1, help="Evaluation games per compared model.")] = 4,
    train_games: Annotated[
        int, typer.Option(min=0, help="Games played to train the partner's adapter when it has none.")
    ] = 4,
    retrain: Annotated[bool, typer.Option(help="Play the training games and train a new partner version.")] = False,
    output: Annotated[Path, typer.Option(help="Folder for compare.md, compare.json and the game and probe files.")] = (
        Path("eval-compare")
    ),
    base_url: Annotated[str, typer.Option(help="The gateway's OpenAI base URL.")] = probe_config.DEFAULT_BASE_URL,
    seed: Annotated[int, typer.Option(help="Seed of the context choice and of the trial and item orders.")] = 0,
    train_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the training job.")] = 3600.0,
) -> None:
    """Compare the bare model, the convention adapter and the partner's adapter on the game and the probe."""
    from clients.compare.cli import run_command

    run_command(
        partner=partner,
        model=model,
        listener=listener,
        games=games,
        train_games=train_games,
        retrain=retrain,
        output=output,
        base_url=base_url,
        seed=seed,
        train_timeout_s=train_timeout,
    )
