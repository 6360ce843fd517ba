"""The ``convention-gateway`` command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from adapters.settings import Settings, load_settings

app = typer.Typer(help="OpenAI-compatible gateway that forms conventions with each partner.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (also read from CONVENTION_GATEWAY_CONFIG).")
]


def _setup(config: Path | None, log_level: str) -> Settings:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return load_settings(config)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--config") from error


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default from the config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default from the config: 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
) -> None:
    """Start the OpenAI-compatible gateway."""
    import uvicorn

    from gateway.app import create_app

    settings = _setup(config, log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=10,
    )


@app.command()
def worker(
    config: ConfigOption = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty instead of waiting for jobs.")] = False,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
) -> None:
    """Start a trainer worker that consumes training jobs from the Redis queue."""
    import redis
    from rq import Queue, Worker

    from trainer import worker as training_worker

    settings = _setup(config, log_level)
    training_worker.configure(settings)
    connection = redis.Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue_name, connection=connection)
    logging.getLogger(__name__).info(
        "Worker: consuming queue %s on %s", settings.queue_name, settings.redis_url_redacted
    )
    Worker([queue], connection=connection).work(burst=burst, logging_level=log_level.upper())


@app.command()
def demo(
    base_url: Annotated[str, typer.Option(help="The gateway's OpenAI base URL.")] = "http://127.0.0.1:8000/v1",
    partner: Annotated[str | None, typer.Option(help="Partner id (default: the one in the scripted sessions).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Completion length of each scripted turn.")] = 48,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the training job.")] = 1800.0,
) -> None:
    """Play scripted sessions through the gateway, train the partner's adapter and show it serving."""
    from clients.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    raise typer.Exit(run_demo(base_url=base_url, partner_id=partner, max_tokens=max_tokens, timeout_s=timeout))


if __name__ == "__main__":
    app()
