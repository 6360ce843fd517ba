"""Names of every Redis key the product writes, one builder per entity."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builders under one prefix, so that several deployments or test runs can share a Redis."""

    prefix: str = "cg"

    def partners(self) -> str:
        """SET of every partner id that has history, adapters or jobs."""
        return f"{self.prefix}:partners"

    def sessions(self, partner_id: str) -> str:
        """ZSET of a partner's session ids scored by last update time."""
        return f"{self.prefix}:partner:{partner_id}:sessions"

    def session(self, partner_id: str, session_id: str) -> str:
        """HASH with a session's metadata (created_at, updated_at, turn_count)."""
        return f"{self.prefix}:partner:{partner_id}:session:{session_id}"

    def session_turns(self, partner_id: str, session_id: str) -> str:
        """LIST of a session's turns as JSON, oldest first."""
        return f"{self.prefix}:partner:{partner_id}:session:{session_id}:turns"

    def session_metrics(self, partner_id: str, session_id: str) -> str:
        """STRING caching a session's computed efficiency metrics as JSON, valid while its turn_count is unchanged."""
        # TODO: delete these entries with the partner's sessions once a partner DELETE endpoint exists.
        return f"{self.prefix}:partner:{partner_id}:session:{session_id}:metrics"

    def conversation(self, partner_id: str, digest: str) -> str:
        """STRING mapping a conversation digest to the session it belongs to."""
        return f"{self.prefix}:partner:{partner_id}:conversation:{digest}"

    def turn_written(self, turn_id: str) -> str:
        """STRING marking a turn as stored, so that a retried write never stores it twice."""
        return f"{self.prefix}:turn:{turn_id}:written"

    def partner_stats(self, partner_id: str) -> str:
        """HASH with the partner's training counters: new_turns (trainable turns since the last job), last_job_at."""
        return f"{self.prefix}:partner:{partner_id}:stats"

    def partner_settings(self, partner_id: str) -> str:
        """HASH with the partner's own settings (auto_training)."""
        return f"{self.prefix}:partner:{partner_id}:settings"

    def adapters(self, partner_id: str) -> str:
        """HASH version -> adapter version metadata as JSON."""
        return f"{self.prefix}:partner:{partner_id}:adapters"

    def active_adapter(self, partner_id: str) -> str:
        """STRING with the partner's active adapter version."""
        return f"{self.prefix}:partner:{partner_id}:adapter:active"

    def adapter_version_counter(self, partner_id: str) -> str:
        """Counter that hands out the partner's next adapter version number."""
        return f"{self.prefix}:partner:{partner_id}:adapter:next_version"

    def partner_open_job(self, partner_id: str) -> str:
        """STRING with the id of the partner's queued or running training job."""
        return f"{self.prefix}:partner:{partner_id}:open_job"

    def jobs(self) -> str:
        """ZSET of every training job id scored by creation time."""
        return f"{self.prefix}:jobs"

    def job(self, job_id: str) -> str:
        """STRING with a training job object as JSON."""
        return f"{self.prefix}:job:{job_id}"

    def job_queue_lock(self, job_id: str) -> str:
        """STRING lock held while one process moves a training job onto the RQ queue, so it is enqueued once."""
        return f"{self.prefix}:job:{job_id}:queue-lock"

    def job_events(self, job_id: str) -> str:
        """LIST of a training job's events as JSON, oldest first."""
        return f"{self.prefix}:job:{job_id}:events"

    def adapter_updates_channel(self) -> str:
        """Pub/sub channel announcing adapter activations."""
        return f"{self.prefix}:adapter-updates"
