"""The training job that ``convention-gateway worker`` runs: sessions -> pairs -> LoRA -> registered adapter."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from adapters.base_model import resolve_model_path
from adapters.keys import Keys
from adapters.registry import AdapterRegistry, AdapterVersion, adapter_folder
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
    from trainer.evaluate import evaluate_versions, gate, split_pairs
    from trainer.train import train_lora_adapter

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

    train_pairs, held_out = split_pairs(pairs)
    jobs.add_event(job_id, "info", f"Training on {len(train_pairs)} pairs, {len(held_out)} held out for evaluation")
    base = settings.require_local_model()
    model_path = resolve_model_path(base.litellm_params.target, settings.model_cache_dir)
    partner_dir = settings.artifact_dir / partner_id
    staging = partner_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        result = train_lora_adapter(
            model_path=model_path,
            pairs=train_pairs,
            output_dir=staging,
            settings=settings.training,
            work_dir=staging / "trainer-state",
            on_progress=lambda message, metrics: jobs.add_event(job_id, "info", message, metrics),
            should_stop=lambda: jobs.is_cancelled(job_id),
        )
        shutil.rmtree(staging / "trainer-state", ignore_errors=True)
        if jobs.is_cancelled(job_id):
            raise TrainingCancelledError(job_id)
        jobs.add_event(job_id, "info", f"Evaluating on {len(held_out)} held-out pairs")
        evaluation = evaluate_versions(
            model_path=model_path,
            new_adapter=str(staging),
            active_adapter=_active_adapter_path(registry, partner_id),
            held_out=held_out,
        )
        activate, reason = gate(evaluation)
        version = registry.allocate_version(partner_id)
        final = adapter_folder(settings.artifact_dir, partner_id, version)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    adapter = AdapterVersion(
        partner_id=partner_id,
        version=version,
        base_model=base.model_name,
        path=str(final),
        created_at=int(time.time()),
        job_id=job_id,
        metrics={
            "pairs": len(train_pairs),
            "held_out_pairs": len(held_out),
            "train_loss": result.train_loss,
            "steps": result.steps,
            "held_out_accuracy": evaluation["new"]["accuracy"],
            "held_out_margin": evaluation["new"]["mean_margin"],
        },
    )
    registry.register(adapter, activate=activate)
    outcome = "saved and activated" if activate else "saved as a candidate, not activated"
    jobs.add_event(job_id, "info", f"Adapter {adapter.name} {outcome}: {reason}", {"evaluation": evaluation})
    return _finish(
        jobs,
        job_id,
        "succeeded",
        fine_tuned_model=f"ft:{adapter.base_model}:{partner_id}:{version}",
        adapter_version=version,
        trained_tokens=result.trained_tokens,
        result={
            "evaluation": evaluation,
            "activated": activate,
            "gate_reason": reason,
            "train_loss": result.train_loss,
        },
        result_files=[str(Path(final) / "adapter_model.safetensors")],
    )


def _active_adapter_path(registry: AdapterRegistry, partner_id: str) -> str | None:
    """Returns the folder of the partner's active adapter, or None when the base model serves the partner."""
    version = registry.active_version(partner_id)
    if version is None:
        return None
    path = Path(registry.get(partner_id, version).path)
    return str(path) if (path / "adapter_config.json").is_file() else None


def on_rq_failure(job: Any, connection: Any, exc_type: Any, value: Any, traceback: Any) -> None:
    """Marks the training job failed when RQ reports a failure the job could not record itself (a timeout)."""
    settings = _current_settings()
    jobs, _, _ = _stores(settings)
    stored = jobs.get(job.id)
    if stored is None or stored["status"] in TERMINAL_STATUSES:
        return
    message = f"{getattr(exc_type, '__name__', exc_type)}: {value}"
    logger.error("Job %s: failed in the queue, %s", job.id, message)
    jobs.set_status(job.id, "failed", error={"code": "worker_error", "message": message, "param": None})
