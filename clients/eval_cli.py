"""The ``convention-gateway eval`` commands: measurements of convention formation against a running gateway."""

from __future__ import annotations

import typer

eval_app = typer.Typer(
    help="Measure convention formation against a running gateway (reference game, re-mention probe).",
    no_args_is_help=True,
)
