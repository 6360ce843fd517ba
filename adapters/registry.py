"""Adapter registry: version metadata in Redis, adapter files in the artifact folder.

Versions are numbered per partner from 1 and never reused. The worker writes with the synchronous client;
the gateway reads the active version on every request with the asyncio client.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from adapters.keys import Keys

logger = logging.getLogger(__name__)

# The registry owner of the convention adapter, the post-trained base that serves partners without an adapter of
# their own and that partners' adapters continue from. Partner ids start with a letter or digit, so it is never
# a partner's; its versions are named "_convention/<version>".
CONVENTION_OWNER = "_convention"


@dataclass(frozen=True)
class AdapterVersion:
    """One trained adapter of one partner."""

    partner_id: str
    version: int
    base_model: str
    path: str
    created_at: int
    job_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Returns the public name, ``<partner_id>/<version>``, also sent in the ``X-Adapter`` header."""
        return f"{self.partner_id}/{self.version}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> AdapterVersion:
        return cls(**json.loads(raw))


class AdapterNotFoundError(LookupError):
    """A partner has no adapter with the requested version."""

    def __init__(self, partner_id: str, version: int) -> None:
        super().__init__(f"partner {partner_id!r} has no adapter version {version}")
        self.partner_id = partner_id
        self.version = version


def adapter_files_present(adapter: AdapterVersion) -> bool:
    """Returns whether the version's adapter files exist on this machine."""
    return (Path(adapter.path) / "adapter_config.json").is_file()


def adapter_folder(artifact_dir: Path, partner_id: str, version: int) -> Path:
    """Returns the final folder of an adapter version's files."""
    return artifact_dir / partner_id / str(version)


class AdapterRegistry:
    """Synchronous registry operations, used by the worker and the management routes."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def allocate_version(self, partner_id: str) -> int:
        return int(self.client.incr(self.keys.adapter_version_counter(partner_id)))

    def register(self, adapter: AdapterVersion, *, activate: bool) -> None:
        """Stores the version's metadata and, when ``activate`` is true, makes it the partner's active one."""
        pipe = self.client.pipeline(transaction=True)
        if adapter.partner_id != CONVENTION_OWNER:
            pipe.sadd(self.keys.partners(), adapter.partner_id)
        pipe.hset(self.keys.adapters(adapter.partner_id), str(adapter.version), adapter.to_json())
        if activate:
            pipe.set(self.keys.active_adapter(adapter.partner_id), adapter.version)
        pipe.execute()
        logger.info("Registry: partner %s adapter version %s registered", adapter.partner_id, adapter.version)

        if activate:
            self._announce(adapter)

    def activate(self, partner_id: str, version: int) -> AdapterVersion:
        adapter = self.get(partner_id, version)
        self.client.set(self.keys.active_adapter(partner_id), version)
        self._announce(adapter)
        return adapter

    def get(self, partner_id: str, version: int) -> AdapterVersion:
        raw = self.client.hget(self.keys.adapters(partner_id), str(version))
        if raw is None:
            raise AdapterNotFoundError(partner_id, version)
        return AdapterVersion.from_json(raw)

    def active_version(self, partner_id: str) -> int | None:
        raw = self.client.get(self.keys.active_adapter(partner_id))
        return int(raw) if raw is not None else None

    def active(self, partner_id: str) -> AdapterVersion | None:
        """Returns the active version's metadata, or None when there is none or its files are missing."""
        version = self.active_version(partner_id)
        if version is None:
            return None
        adapter = self.get(partner_id, version)
        return adapter if adapter_files_present(adapter) else None

    def list(self, partner_id: str) -> list[AdapterVersion]:
        values = self.client.hvals(self.keys.adapters(partner_id))
        return sorted((AdapterVersion.from_json(raw) for raw in values), key=lambda adapter: adapter.version)

    def _announce(self, adapter: AdapterVersion) -> None:
        message = json.dumps({"partner_id": adapter.partner_id, "version": adapter.version, "at": int(time.time())})
        self.client.publish(self.keys.adapter_updates_channel(), message)
        logger.info("Registry: partner %s adapter version %s is active", adapter.partner_id, adapter.version)


async def fetch_active_adapter(client: aioredis.Redis, keys: Keys, partner_id: str) -> AdapterVersion | None:
    """Returns the partner's active adapter version, or None when the base model serves the partner."""
    version = await client.get(keys.active_adapter(partner_id))
    if version is None:
        return None

    raw = await client.hget(keys.adapters(partner_id), version if isinstance(version, str) else version.decode())
    if raw is None:
        logger.warning("Registry: partner %s active version %s has no metadata", partner_id, version)
        return None
    return AdapterVersion.from_json(raw)


async def fetch_adapter(client: aioredis.Redis, keys: Keys, partner_id: str, version: int) -> AdapterVersion | None:
    """Returns one adapter version of a partner, or None when it does not exist."""
    raw = await client.hget(keys.adapters(partner_id), str(version))
    return AdapterVersion.from_json(raw) if raw is not None else None


async def fetch_adapters(client: aioredis.Redis, keys: Keys, partner_id: str) -> list[AdapterVersion]:
    values = await client.hvals(keys.adapters(partner_id))
    return sorted((AdapterVersion.from_json(raw) for raw in values), key=lambda adapter: adapter.version)


def adapter_model_id(adapter: AdapterVersion) -> str:
    """Returns the model id clients can send to request this adapter version explicitly."""
    return f"ft:{adapter.base_model}:{adapter.partner_id}:{adapter.version}"


# An adapter version in a model id: ASCII digits without a leading zero, short enough for any version count.
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def parse_adapter_model_id(model: str) -> tuple[str, str, int] | None:
    """Splits ``ft:<base>:<partner>:<version>`` into its parts; returns None for other model names."""
    if not model.startswith("ft:"):
        return None
    parts = model[3:].rsplit(":", 2)
    if len(parts) != 3 or _VERSION.fullmatch(parts[2]) is None:
        return None
    return parts[0], parts[1], int(parts[2])
