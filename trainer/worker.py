"""The training job that ``convention-gateway worker`` runs: sessions -> pairs -> LoRA -> registered adapter."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq.exceptions import AbandonedJobError

from adapters.base_model import resolve_model_path
from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER, AdapterRegistry, AdapterVersion, adapter_folder
from adapters.settings import Settings
from trainer.jobs import TERMINAL_STATUSES, JobFinishedError, JobStore, TrainingCancelledError
from trainer.mining import mine_pairs
from trainer.sessions import load_partner_sessions

logger = logging.getLogger(__name__)

_settings: Settings | None = None


class InsufficientDataError(ValueError):
    """The partner's sessions do not contain enough convention signal to train on."""


def configure(settings: Settings) -> None:
    """Set the settings that jobs run with; the worker command calls this before it starts consuming."""
    global _settings
    _settings = settings


def _current_settings() -> Settings:
    if _settings is None:
        raise RuntimeError("trainer.worker.configure() was not called before a job ran")
    return _settings


def _stores(settings: Settings) -> tuple[JobStore, AdapterRegistry, redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=30)
    keys = Keys(settings.key_prefix)
    return JobStore(client, keys), AdapterRegistry(client, keys), client


def run_training_job(job_id: str) -> dict[str, Any]:
    """Train, store and activate a new adapter version for the job's partner."""
    settings = _current_settings()
    jobs, registry, client = _stores(settings)
    job = jobs.get(job_id)
    if job is None:
        raise KeyError(f"training job {job_id} not found in Redis")

    try:
        jobs.set_status(job_id, "running")
    except JobFinishedError as finished:
        logger.info("Job %s: skipped, already %s", job_id, finished.status)
        return jobs.get(job_id) or job

    try:
        return _train_and_publish(job, settings, jobs, registry, client)
    except TrainingCancelledError:
        logger.info("Job %s: cancelled, no adapter published (partner %s)", job_id, job["partner_id"])
        return jobs.get(job_id) or job
    except InsufficientDataError as error:
        logger.warning("Job %s: failed, %s", job_id, error)
        return _finish(
            jobs, job_id, "failed", error={"code": "insufficient_data", "message": str(error), "param": None}
        )
    except Exception as error:
        logger.exception("Job %s: failed", job_id)
        _finish(jobs, job_id, "failed", error={"code": "training_failed", "message": str(error), "param": None})
        raise


def _finish(jobs: JobStore, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """Sets a terminal status, unless the job already ended (a cancel that came first wins)."""
    try:
        return jobs.set_status(job_id, status, **fields)
    except JobFinishedError as finished:
        logger.info("Job %s: not marked %s, already %s", job_id, status, finished.status)
        stored = jobs.get(job_id)
        assert stored is not None
        return stored


def _train_and_publish(
    job: dict[str, Any], settings: Settings, jobs: JobStore, registry: AdapterRegistry, client: redis.Redis
) -> dict[str, Any]:
    job_id, partner_id = job["id"], job["partner_id"]
    sessions = load_partner_sessions(client, registry.keys, partner_id)
    # A mention in a session's first message has no conversation before it to condition on, so it is not trained on.
    pairs = [pair for pair in mine_pairs(sessions) if pair.prompt]
    jobs.add_event(job_id, "info", f"Mined {len(pairs)} preference pairs from {len(sessions)} sessions")
    minimum = settings.training.min_pairs
    if len(pairs) < minimum:
        raise InsufficientDataError(
            f"too little data: {len(sessions)} sessions of partner {partner_id!r} gave {len(pairs)} preference "
            f"pairs (re-mentions of an earlier, longer phrase); at least {minimum} are needed. "
            "Chat more with this partner and start the job again."
        )

    published = train_and_register(
        settings,
        registry,
        owner=partner_id,
        pairs=pairs,
        work_name=job_id,
        job_id=job_id,
        report=lambda message, metrics: jobs.add_event(job_id, "info", message, metrics or None),
        should_stop=lambda: jobs.is_cancelled(job_id),
    )
    adapter = published.adapter
    return _finish(
        jobs,
        job_id,
        "succeeded",
        fine_tuned_model=f"ft:{adapter.base_model}:{partner_id}:{adapter.version}",
        adapter_version=adapter.version,
        trained_tokens=published.training.trained_tokens,
        result={
            "evaluation": published.evaluation,
            "activated": published.activated,
            "gate_reason": published.reason,
            "train_loss": published.training.train_loss,
            "sft_loss": published.training.sft_loss,
            "started_from": published.started_from,
        },
        result_files=[str(Path(adapter.path) / "adapter_model.safetensors")],
    )


@dataclass(frozen=True)
class Published:
    """A trained, evaluated and registered adapter version."""

    adapter: AdapterVersion
    activated: bool
    reason: str
    evaluation: dict[str, Any]
    training: Any
    started_from: str | None


# Digest of the training pairs that a work folder's checkpoints were trained on.
PAIRS_DIGEST_FILE = "pairs.sha256"


def _pairs_digest(pairs: list[Any]) -> str:
    text = json.dumps([[pair.prompt, pair.chosen, pair.rejected] for pair in pairs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _drop_stale_checkpoints(work_dir: Path, pairs: list[Any], report: Callable[[str, dict[str, Any]], None]) -> None:
    """Removes checkpoints of an earlier attempt that trained on other pairs, and records the pairs' digest.

    A requeued job mines the partner's sessions again, and they may have grown since the first attempt. Resuming
    those checkpoints would mix two data sets, so the training starts over instead.
    """
    digest = _pairs_digest(pairs)
    recorded = work_dir / PAIRS_DIGEST_FILE
    if recorded.is_file() and recorded.read_text().strip() != digest:
        shutil.rmtree(work_dir, ignore_errors=True)
        report("The sessions changed since the last attempt; training starts over", {})
    work_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(digest)


def train_and_register(
    settings: Settings,
    registry: AdapterRegistry,
    *,
    owner: str,
    pairs: list[Any],
    work_name: str,
    report: Callable[[str, dict[str, Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
    job_id: str | None = None,
) -> Published:
    """Trains both stages on ``pairs``, evaluates on held-out pairs, registers the version and activates it when
    the gate allows.

    A partner (``owner``) continues from the active convention adapter; the convention adapter itself starts
    from the base model. Checkpoints live in a work folder named after ``work_name``, so running the same work
    again (a requeued job) resumes from them. The folder is removed once the version is registered.
    """
    from trainer.evaluate import evaluate_versions, gate, split_pairs
    from trainer.train import train_convention_adapter

    train_pairs, held_out = split_pairs(pairs)
    report(f"Training on {len(train_pairs)} pairs, {len(held_out)} held out for evaluation", {})
    base = settings.require_local_model()
    model_path = resolve_model_path(base.litellm_params.target, settings.model_cache_dir)
    convention = registry.active(CONVENTION_OWNER) if owner != CONVENTION_OWNER else None
    if convention is not None and convention.base_model != base.model_name:
        convention = None
    if convention is not None:
        report(f"Continuing from the convention adapter {convention.name}", {})

    owner_dir = settings.artifact_dir / owner
    work_dir = owner_dir / f".work-{work_name}"
    _drop_stale_checkpoints(work_dir, train_pairs, report)
    staging = work_dir / "adapter"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        result = train_convention_adapter(
            model_path=model_path,
            pairs=train_pairs,
            output_dir=staging,
            settings=settings.training,
            work_dir=work_dir / "checkpoints",
            start_adapter=convention.path if convention is not None else None,
            on_progress=report,
            should_stop=should_stop,
        )
        if should_stop():
            raise TrainingCancelledError(work_name)
        report(f"Evaluating on {len(held_out)} held-out pairs", {})
        active = registry.active(owner)
        evaluation = evaluate_versions(
            model_path=model_path,
            new_adapter=str(staging),
            active_adapter=active.path if active is not None else None,
            convention_adapter=convention.path if convention is not None else None,
            held_out=held_out,
            max_prompt_tokens=settings.training.max_prompt_tokens,
        )
        activate, reason = gate(evaluation)
        version = registry.allocate_version(owner)
        final = adapter_folder(settings.artifact_dir, owner, version)
        staging.rename(final)
    except TrainingCancelledError:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    except BaseException:
        # The checkpoints stay, so that a requeued run resumes; a successful run removes them below.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(work_dir, ignore_errors=True)

    adapter = AdapterVersion(
        partner_id=owner,
        version=version,
        base_model=base.model_name,
        path=str(final),
        created_at=int(time.time()),
        job_id=job_id,
        metrics={
            "pairs": len(train_pairs),
            "held_out_pairs": len(held_out),
            "train_loss": result.train_loss,
            "sft_loss": result.sft_loss,
            "steps": result.steps,
            "sft_steps": result.sft_steps,
            "held_out_accuracy": evaluation["new"]["accuracy"],
            "held_out_margin": evaluation["new"]["mean_margin"],
            "planning_at_rementions": evaluation["new"]["planning_at_rementions"],
            "planning_at_first_mentions": evaluation["new"]["planning_at_first_mentions"],
            "planning_elsewhere": evaluation["new"]["planning_elsewhere"],
            "started_from": convention.name if convention is not None else None,
        },
    )
    registry.register(adapter, activate=activate)
    outcome = "saved and activated" if activate else "saved as a candidate, not activated"
    report(f"Adapter {adapter.name} {outcome}: {reason}", {"evaluation": evaluation})
    return Published(
        adapter=adapter,
        activated=activate,
        reason=reason,
        evaluation=evaluation,
        training=result,
        started_from=convention.name if convention is not None else None,
    )


def on_rq_failure(job: Any, connection: Any, exc_type: Any, value: Any, traceback: Any) -> None:
    """Marks the training job failed when RQ reports a failure the job could not record itself (a timeout)."""
    settings = _current_settings()
    jobs, _, _ = _stores(settings)
    stored = jobs.get(job.id)
    if stored is None or stored["status"] in TERMINAL_STATUSES:
        return
    if isinstance(value, AbandonedJobError):
        # The worker died mid-job; the job stays open so that reconciling with the queue requeues it.
        logger.warning("Job %s: abandoned by a worker that stopped; it will be requeued", job.id)
        return
    message = f"{getattr(exc_type, '__name__', exc_type)}: {value}"
    logger.error("Job %s: failed in the queue, %s", job.id, message)
    jobs.set_status(job.id, "failed", error={"code": "worker_error", "message": message, "param": None})
