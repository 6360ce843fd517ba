"""Training jobs in the shape of OpenAI's fine-tuning job object, stored in Redis and queued with RQ."""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from adapters.keys import Keys

logger = logging.getLogger(__name__)

OPEN_STATUSES = ("validating_files", "queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

# Claims the partner's single open-job slot and stores the new job, unless a job of that partner is still
# open. Returns the id of the open job that blocks, or nil when the new job was stored.
_CREATE_JOB_SCRIPT = """
local open_id = redis.call('GET', KEYS[1])
if open_id then
  local raw = redis.call('GET', ARGV[4] .. open_id)
  if raw then
    local status = cjson.decode(raw)['status']
    if status == 'validating_files' or status == 'queued' or status == 'running' then
      return open_id
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[5])
return false
"""


class JobConflictError(RuntimeError):
    """The partner already has an open training job (validating_files, queued or running)."""

    def __init__(self, partner_id: str, open_job_id: str) -> None:
        super().__init__(
            f"partner {partner_id!r} already has an open training job {open_job_id}; "
            "wait for it to finish, then start a new one"
        )
        self.open_job_id = open_job_id


class TrainingCancelledError(RuntimeError):
    """The job was cancelled while it trained; nothing is published."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"training job {job_id} was cancelled")


class JobFinishedError(RuntimeError):
    """The job already reached a terminal status, so its status cannot change."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"training job {job_id} is already {status}")
        self.status = status


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def new_job(*, job_id: str, partner_id: str, model: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Build a job object with every field that OpenAI's fine-tuning job object has."""
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": int(time.time()),
        "finished_at": None,
        "estimated_finish": None,
        "model": model,
        "fine_tuned_model": None,
        "organization_id": "convention-gateway",
        "status": "validating_files",
        "hyperparameters": hyperparameters,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},
        "training_file": f"sessions:{partner_id}",
        "validation_file": None,
        "result_files": [],
        "trained_tokens": None,
        "result": None,
        "error": None,
        "seed": hyperparameters.get("seed", 0),
        "integrations": [],
        "metadata": {"partner_id": partner_id},
        "user_provided_suffix": partner_id,
        "partner_id": partner_id,
        "adapter_version": None,
        # Times the job was requeued because the worker running it was lost.
        "attempts": 0,
    }


class JobStore:
    """Reads and writes training job objects and their events."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._create_script = client.register_script(_CREATE_JOB_SCRIPT)

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        """Store ``job`` as the partner's open job; raise JobConflictError when another one is open."""
        partner_id = job["partner_id"]
        keys = [
            self.keys.partner_open_job(partner_id),
            self.keys.job(job["id"]),
            self.keys.jobs(),
            self.keys.partners(),
        ]
        job_key_prefix = self.keys.job("")
        blocking = self._create_script(
            keys=keys, args=[job["id"], json.dumps(job), job["created_at"], job_key_prefix, partner_id]
        )
        if blocking:
            raise JobConflictError(partner_id, blocking if isinstance(blocking, str) else blocking.decode())

        self.add_event(job["id"], "info", f"Training job created for partner {partner_id}")
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.job(job_id))
        return json.loads(raw) if raw is not None else None

    def list(self, *, limit: int = 20, after: str | None = None, partner_id: str | None = None) -> list[dict[str, Any]]:
        """Returns jobs newest first, starting after the job id ``after``."""
        ids = [
            item if isinstance(item, str) else item.decode() for item in self.client.zrevrange(self.keys.jobs(), 0, -1)
        ]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]

        jobs = []
        for job_id in ids:
            job = self.get(job_id)
            if job is None or (partner_id is not None and job["partner_id"] != partner_id):
                continue
            jobs.append(job)
            if len(jobs) == limit:
                break
        return jobs

    def open_jobs(self) -> list[dict[str, Any]]:
        """Returns every open job, found through the partners' open-job slots."""
        partner_ids = sorted(_text(item) for item in self.client.smembers(self.keys.partners()))
        if not partner_ids:
            return []

        slots = self.client.mget([self.keys.partner_open_job(partner_id) for partner_id in partner_ids])
        jobs = [self.get(_text(job_id)) for job_id in slots if job_id is not None]
        return [job for job in jobs if job is not None and job["status"] in OPEN_STATUSES]

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Applies ``fields`` to a stored job under WATCH, retrying on conflict.

        Concurrent writers therefore do not lose each other's fields."""
        key = self.keys.job(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise KeyError(job_id)
                    job = json.loads(raw)
                    if "status" in fields and job["status"] in TERMINAL_STATUSES:
                        # A finished job never changes status again: a worker finishing after a cancel keeps it
                        # cancelled.
                        pipe.unwatch()
                        raise JobFinishedError(job_id, job["status"])
                    job.update(fields)
                    pipe.multi()
                    pipe.set(key, json.dumps(job))
                    if job["status"] in TERMINAL_STATUSES:
                        self._release_open_slot(pipe, job)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def is_cancelled(self, job_id: str) -> bool:
        job = self.get(job_id)
        return job is not None and job["status"] == "cancelled"

    def cancel(self, queue_client: redis.Redis, job_id: str) -> dict[str, Any]:
        """Marks an open job cancelled and takes it off the queue; a running job stops at its next training step.

        Raises JobFinishedError when the job already ended.
        """
        job = self.set_status(job_id, "cancelled")
        try:
            Job.fetch(job_id, connection=queue_client).cancel()
        except (NoSuchJobError, InvalidJobOperation):
            # A job still in validating_files is not on the queue yet, and RQ cannot cancel a running job. The
            # creator then skips enqueueing, and the worker reads the cancelled status and stops.
            pass
        return job

    def set_status(self, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
        if status in TERMINAL_STATUSES:
            fields.setdefault("finished_at", int(time.time()))
        job = self.update(job_id, status=status, **fields)
        message = f"Job status: {status}"
        if status == "failed" and job.get("error"):
            message += f" ({job['error']['message']})"
        self.add_event(job_id, "error" if status == "failed" else "info", message)
        logger.info("Job %s: status %s (partner %s)", job_id, status, job["partner_id"])
        return job

    def add_event(self, job_id: str, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        event = {
            "id": f"ftevent-{secrets.token_hex(8)}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "type": "metrics" if data else "message",
            "data": data or {},
        }
        self.client.rpush(self.keys.job_events(job_id), json.dumps(event))

    def events(self, job_id: str, *, limit: int = 20, after: str | None = None) -> list[dict[str, Any]]:
        """Returns events newest first, as OpenAI's list endpoint does."""
        raw_events = self.client.lrange(self.keys.job_events(job_id), 0, -1)
        events = [json.loads(raw) for raw in reversed(raw_events)]
        if after is not None:
            ids = [event["id"] for event in events]
            events = events[ids.index(after) + 1 :] if after in ids else events
        return events[:limit]

    def _release_open_slot(self, pipe: Any, job: dict[str, Any]) -> None:
        # A newer job can claim the slot only after this one is terminal, so the slot still names this job.
        pipe.delete(self.keys.partner_open_job(job["partner_id"]))


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()
