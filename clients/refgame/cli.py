"""The body of ``convention-gateway eval refgame``: turns option values into a run and its errors into messages."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from clients.refgame.config import RefGameConfig, parse_speaker
from clients.refgame.contexts import DEFAULT_CONTEXTS_PATH, ContextsFormatError
from clients.refgame.gateway_client import GatewayError, GatewayUnreachableError, UnknownModelError
from clients.refgame.outputs import OutputDirError, summary_table
from clients.refgame.runner import run_refgame

EXIT_USAGE = 2
EXIT_GATEWAY = 3


def run_command(
    *,
    speakers: list[str],
    listener: str,
    contexts: Path | None,
    games: int,
    repetitions: int,
    output: Path | None,
    base_url: str,
    partner: str,
    seed: int,
    temperature: float,
    max_retries: int,
) -> None:
    """Runs the games and prints the summary table; exits with 2 for bad input and 3 for gateway failures."""
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    try:
        config = RefGameConfig(
            speakers=[parse_speaker(value) for value in speakers],
            listener=listener,
            contexts_path=contexts or DEFAULT_CONTEXTS_PATH,
            games=games,
            repetitions=repetitions,
            output_dir=output,
            base_url=base_url,
            partner_id=partner,
            seed=seed,
            temperature=temperature,
            max_retries=max_retries,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

    try:
        results = run_refgame(config)
    except ContextsFormatError as error:
        typer.echo(f"error: invalid contexts file: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from error
    except OutputDirError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from error
    except UnknownModelError as error:
        typer.echo(f"error: unknown model: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from error
    except GatewayUnreachableError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_GATEWAY) from error
    except GatewayError as error:
        typer.echo(f"error: the gateway failed during the games: {error}", err=True)
        raise typer.Exit(EXIT_GATEWAY) from error

    console.print(summary_table(results))
    for speaker in results["speakers"]:
        if speaker["note"]:
            console.print(f"{speaker['label']}: {speaker['note']}")
    if output is not None:
        console.print(f"Wrote results.json, trials.csv, summary.csv and refgame.png to {output}")
