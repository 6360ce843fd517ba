"""The body of ``convention-gateway eval compare``: option values in, one-line errors out."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from clients.compare.admin import CompareError
from clients.compare.runner import CompareConfig, run_compare
from clients.probe.client import ProbeGatewayError
from clients.probe.data import ProbeDataError
from clients.refgame.contexts import ContextsFormatError
from clients.refgame.gateway_client import GatewayError
from clients.refgame.outputs import OutputDirError

EXIT_INVALID_INPUT = 2
EXIT_GATEWAY_FAILED = 3


def run_command(
    *,
    partner: str,
    model: str,
    listener: str,
    games: int,
    train_games: int,
    retrain: bool,
    output: Path,
    base_url: str,
    seed: int,
    train_timeout_s: float,
) -> None:
    """Runs the comparison; exits with 2 for bad input and 3 when the gateway or the training job fails."""
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    try:
        config = CompareConfig(
            model=model,
            partner_id=partner,
            output_dir=output,
            base_url=base_url,
            listener=listener,
            games=games,
            train_games=train_games,
            retrain=retrain,
            seed=seed,
            train_timeout_s=train_timeout_s,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

    try:
        run_compare(config, console=console)
    except (ContextsFormatError, ProbeDataError, OutputDirError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from error
    except (CompareError, GatewayError, ProbeGatewayError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_GATEWAY_FAILED) from error
    console.print(f"Results: {output / 'compare.md'}, {output / 'compare.json'}, {output}/refgame, {output}/probe")
