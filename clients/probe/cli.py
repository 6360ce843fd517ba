"""The body of ``convention-gateway eval probe``: parse the options, run the probe, print and write the results."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from clients.probe.client import ProbeGatewayError, UnknownModelError
from clients.probe.config import ProbeConfig, parse_model
from clients.probe.data import ProbeDataError
from clients.probe.report import summary_table, write_outputs
from clients.probe.runner import run_probe
from clients.refgame.outputs import OutputDirError

# Exit statuses shared with the reference game command.
EXIT_INVALID_INPUT = 2
EXIT_GATEWAY_FAILED = 3


def _fail(console: Console, message: str, code: int) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=code)


def run_command(
    *,
    models: list[str],
    dialogues: Path | None,
    partner: str,
    output: Path | None,
    base_url: str,
    max_tokens: int,
    limit: int | None,
) -> None:
    """Runs the probe for the command line. Every expected failure ends with a one-line error.

    Exits with status 2 on invalid input (options, dialogues file, unknown model, output folder), and with
    status 3 when the gateway is unreachable or fails a request.
    """
    console = Console(stderr=True)
    try:
        config = ProbeConfig(
            models=[parse_model(value) for value in models],
            partner_id=partner,
            base_url=base_url,
            output_dir=output,
            max_tokens=max_tokens,
            limit=limit,
        )
        if dialogues is not None:
            config.dialogues_path = dialogues
        results = run_probe(config, console=console)
    except OutputDirError as error:
        raise _fail(console, str(error), EXIT_INVALID_INPUT) from error
    except FileNotFoundError as error:
        raise _fail(console, f"dialogues file not found: {error.filename}", EXIT_INVALID_INPUT) from error
    except (ProbeDataError, UnknownModelError, ValueError) as error:
        raise _fail(console, str(error), EXIT_INVALID_INPUT) from error
    except ProbeGatewayError as error:
        raise _fail(console, str(error), EXIT_GATEWAY_FAILED) from error

    Console().print(summary_table(results))
    if output is None:
        return
    try:
        written = write_outputs(results, output)
    except OSError as error:
        raise _fail(console, f"cannot write the results to {output}: {error}", EXIT_INVALID_INPUT) from error
    for path in written:
        console.print(f"wrote {path}", highlight=False)
