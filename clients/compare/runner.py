"""The comparison: make sure each model to compare exists, then play the reference game and run the probe on all.

The partner adapter is trained on reference games played earlier with the same partner. When the partner has no
adapter yet, the comparison first plays ``train_games`` games as that partner, served as routing decides (so by the
convention adapter when one is active). Then it starts a training job and follows it to its end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from adapters.registry import CONVENTION_OWNER
from clients.compare.admin import CompareError, GatewayAdmin
from clients.compare.report import comparison_rows, comparison_table, write_markdown
from clients.options import check_base_url, check_partner_id
from clients.probe import ProbeConfig, run_probe
from clients.probe.data import DEFAULT_DIALOGUES_PATH
from clients.probe.report import write_outputs as write_probe_outputs
from clients.refgame.config import RefGameConfig, SpeakerSpec
from clients.refgame.contexts import DEFAULT_CONTEXTS_PATH
from clients.refgame.gateway_client import DEFAULT_BASE_URL
from clients.refgame.listeners import EMBEDDING_LISTENER
from clients.refgame.outputs import check_output_dir
from clients.refgame.runner import run_refgame

logger = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    """Everything a comparison needs. ``model`` is the local model's served name."""

    model: str
    partner_id: str
    output_dir: Path
    base_url: str = DEFAULT_BASE_URL
    listener: str = EMBEDDING_LISTENER
    games: int = 4
    train_games: int = 4
    retrain: bool = False
    repetitions: int = 6
    # Probe only the first N items; None probes all of them.
    probe_limit: int | None = None
    contexts_path: Path = DEFAULT_CONTEXTS_PATH
    dialogues_path: Path = DEFAULT_DIALOGUES_PATH
    seed: int = 0
    temperature: float = 0.7
    train_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.games < 1:
            raise ValueError(f"games must be at least 1, got {self.games}")
        if self.train_games < 0:
            raise ValueError(f"train_games must not be negative, got {self.train_games}")
        if self.partner_id == CONVENTION_OWNER:
            raise ValueError(f"{CONVENTION_OWNER!r} owns the convention adapter and is not a partner id")
        check_partner_id(self.partner_id, with_listener=self.listener != EMBEDDING_LISTENER)
        check_base_url(self.base_url)


def run_compare(config: CompareConfig, *, console: Console) -> dict[str, Any]:
    """Runs the comparison, writes its files into ``config.output_dir`` and returns the combined results."""
    check_output_dir(config.output_dir)
    admin = GatewayAdmin(config.base_url)
    try:
        convention = admin.convention_version(config.model)
        partner_version = None if config.retrain else admin.partner_version(config.partner_id)
        training = None
        if partner_version is None:
            training = _train_partner(config, admin, console)
            partner_version = admin.partner_version(config.partner_id)
    finally:
        admin.close()

    speakers = _speakers(config, convention, partner_version)
    console.print(f"Comparing {', '.join(f'{s.label} ({s.model})' for s in speakers)} as partner {config.partner_id}")
    refgame = run_refgame(_game_config(config, speakers, config.output_dir / "refgame", config.games))
    probe = run_probe(_probe_config(config, speakers), console=console)
    write_probe_outputs(probe, config.output_dir / "probe")

    results = {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()},
        "speakers": [vars(speaker) for speaker in speakers],
        "training": training,
        "rows": comparison_rows(speakers, refgame["speakers"], probe.summaries),
    }
    (config.output_dir / "compare.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, config.output_dir / "compare.md")
    console.print(comparison_table(results["rows"]))
    return results


def _speakers(config: CompareConfig, convention: int | None, partner_version: int | None) -> list[SpeakerSpec]:
    speakers = [SpeakerSpec(label="base", model=config.model, bare=True)]
    if convention is None:
        logger.warning("Compare: no convention adapter is registered for %s; it is left out", config.model)
    else:
        speakers.append(SpeakerSpec(label="convention", model=f"ft:{config.model}:{CONVENTION_OWNER}:{convention}"))
    if partner_version is None:
        logger.warning("Compare: partner %s has no adapter; it is left out", config.partner_id)
    else:
        model = f"ft:{config.model}:{config.partner_id}:{partner_version}"
        speakers.append(SpeakerSpec(label="partner", model=model))
    return speakers


def _game_config(config: CompareConfig, speakers: list[SpeakerSpec], output: Path, games: int) -> RefGameConfig:
    return RefGameConfig(
        speakers=speakers,
        listener=config.listener,
        contexts_path=config.contexts_path,
        games=games,
        repetitions=config.repetitions,
        output_dir=output,
        base_url=config.base_url,
        partner_id=config.partner_id,
        seed=config.seed,
        temperature=config.temperature,
    )


def _probe_config(config: CompareConfig, speakers: list[SpeakerSpec]) -> ProbeConfig:
    return ProbeConfig(
        models=list(speakers),
        dialogues_path=config.dialogues_path,
        partner_id=config.partner_id,
        base_url=config.base_url,
        limit=config.probe_limit,
    )


def _train_partner(config: CompareConfig, admin: GatewayAdmin, console: Console) -> dict[str, Any]:
    """Plays the training games as the partner, trains its adapter and returns what happened."""
    if config.train_games < 1:
        raise CompareError(
            f"partner {config.partner_id!r} has no adapter; pass --train-games N to play N games and train one"
        )
    console.print(f"Playing {config.train_games} games as partner {config.partner_id} to train its adapter")
    # The same seed picks the same contexts as the evaluation games: the partner saw these items before.
    speaker = SpeakerSpec(label="training", model=config.model)
    output = config.output_dir / "training-games"
    run_refgame(_game_config(config, [speaker], output, config.train_games))

    job_id = admin.start_training(config.partner_id)
    console.print(f"Training job {job_id} started; following its events")

    def show(event: dict[str, Any]) -> None:
        console.print(f"  [{event.get('level', 'info')}] {event.get('message', '')}", highlight=False)

    job = admin.wait_for_job(job_id, timeout_s=config.train_timeout_s, on_event=show)
    if job["status"] != "succeeded":
        # The other models are still compared, and the table gives the reason the partner adapter is missing.
        console.print(f"[yellow]Training job {job_id} ended {job['status']}: {job.get('error')}[/yellow]")
        logger.warning("Compare: training job %s for partner %s ended %s", job_id, config.partner_id, job["status"])
    return {"job_id": job_id, "status": job["status"], "result": job.get("result"), "error": job.get("error")}
