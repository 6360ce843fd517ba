"""The ``convention-gateway`` command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from adapters.settings import Settings, load_settings
from clients.eval_cli import eval_app

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

    from adapters.keys import Keys
    from trainer import worker as training_worker
    from trainer.jobs import JobStore
    from trainer.queueing import requeue_lost_jobs

    settings = _setup(config, log_level)
    training_worker.configure(settings)
    connection = redis.Redis.from_url(settings.redis_url)
    requeued = requeue_lost_jobs(
        JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), Keys(settings.key_prefix)),
        connection,
        queue_name=settings.queue_name,
        timeout_s=settings.job_timeout_s,
        max_attempts=settings.training_policy.max_attempts,
    )
    for job in requeued:
        logging.getLogger(__name__).warning("Worker: job %s of a stopped worker is now %s", job["id"], job["status"])
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


@app.command("post-train")
def post_train(
    corpus: Annotated[Path, typer.Option(help="Dialogue corpus, JSON Lines (see docs/corpus.md).")],
    config: ConfigOption = None,
    max_pairs: Annotated[
        int | None, typer.Option(min=1, help="Train on at most this many mined pairs (for a quick trial).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "warning",
) -> None:
    """Post-train the local base model on a corpus; the result serves partners that have no adapter yet."""
    from trainer.corpus import CorpusFormatError
    from trainer.posttrain import post_train as run_post_training
    from trainer.worker import InsufficientDataError

    settings = _setup(config, log_level)
    if not corpus.is_file():
        raise typer.BadParameter(f"corpus file not found: {corpus}", param_hint="--corpus")

    def report(message: str, metrics: dict[str, object]) -> None:
        if "stage" not in metrics:
            typer.echo(message)

    try:
        published = run_post_training(settings, corpus, report=report, max_pairs=max_pairs)
    except (CorpusFormatError, InsufficientDataError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    evaluation = published.evaluation
    typer.echo(
        "Held-out preference accuracy: "
        + ", ".join(f"{name} {scores['accuracy']:.3f}" for name, scores in evaluation.items())
    )
    state = "active: it now serves partners without an adapter" if published.activated else "a candidate, not active"
    typer.echo(f"Convention adapter {published.adapter.name} is {state} ({published.reason}).")


corpus_app = typer.Typer(help="Dialogue corpora for post-training.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(eval_app, name="eval")


@corpus_app.command("convert")
def convert_corpus(
    source: Annotated[str, typer.Option("--from", help="Format of INPUT: sharegpt or dailydialog.")],
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="File to convert.")],
    output_path: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Corpus file to write (JSON Lines).")],
) -> None:
    """Convert a public dialogue dataset into the corpus format."""
    from trainer.corpus import CorpusFormatError, convert

    try:
        count = convert(source, input_path, output_path)
    except (CorpusFormatError, ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"Wrote {count} dialogues to {output_path}")


if __name__ == "__main__":
    app()
