"""Prometheus series of one gateway app, in a registry of its own so that several apps can share a process.

Label values come only from bounded sets: route templates, configured model names, HTTP status codes and fixed
kinds. Partner ids, session ids, adapter versions and ``ft:`` model ids never become label values, because each
new value creates a new time series.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adapters.registry import CONVENTION_OWNER, parse_adapter_model_id
from adapters.settings import Settings
from gateway.partner_tokens import TOKENS
from trainer.jobs import OPEN_STATUSES, TERMINAL_STATUSES

logger = logging.getLogger(__name__)

PREFIX = "convention_gateway"
# Label of a model that is not configured in model_list, and of requests that name no model.
OTHER_MODEL = "other"
NO_MODEL = "none"
JOB_STATUSES = OPEN_STATUSES + TERMINAL_STATUSES
ADAPTER_KINDS = ("partner", "convention", "none", "upstream")
# Whole streams count towards the request duration, so the buckets reach minutes.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FIRST_TOKEN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The gateway's series and the label mapping that keeps them bounded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self._model_names = frozenset(entry.model_name for entry in settings.model_list)
        self._add_request_series(self.registry)
        self._add_usage_series(self.registry)
        self._add_state_gauges(self.registry)

    def _add_request_series(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route template, model and HTTP status code.",
            ["endpoint", "model", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from receiving a request until its response, or its whole stream, was sent.",
            ["endpoint", "model"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Seconds from receiving a streamed request until the first event with generated text was sent.",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS_S,
            registry=registry,
        )
        self.stream_errors = Counter(
            f"{PREFIX}_stream_errors",
            "Streamed responses that ended with an error event after the 200 status line was sent.",
            ["endpoint", "model"],
            registry=registry,
        )

    def _add_usage_series(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens of stored turns: prompt, completion, the partner's new messages, and removed planning tokens.",
            ["model", "kind"],
            registry=registry,
        )
        self.requests_by_adapter_kind = Counter(
            f"{PREFIX}_requests_by_adapter_kind",
            "Served completions by what served them: a partner adapter, the convention adapter, the bare local "
            "model (none) or an upstream provider.",
            ["kind"],
            registry=registry,
        )
        for kind in ADAPTER_KINDS:
            self.requests_by_adapter_kind.labels(kind=kind)

    def _add_state_gauges(self, registry: CollectorRegistry) -> None:
        """Adds the gauges that ``prometheus_scrape`` sets when Prometheus scrapes."""
        self.loaded_adapters = Gauge(
            f"{PREFIX}_loaded_adapters", "Adapter versions loaded in the local engine's memory.", registry=registry
        )
        self.active_adapters = Gauge(
            f"{PREFIX}_active_adapters",
            "Owners with an active adapter version: partners, and the convention adapter (0 or 1).",
            ["owner_kind"],
            registry=registry,
        )
        self.training_jobs = Gauge(f"{PREFIX}_training_jobs", "Training jobs by status.", ["status"], registry=registry)

    def model_label(self, model: str | None) -> str:
        """Maps a requested model to a configured model name; an ``ft:`` id maps to its base model."""
        if not model:
            return NO_MODEL
        if model in self._model_names:
            return model
        parsed = parse_adapter_model_id(model)
        if parsed is not None and parsed[0] in self._model_names:
            return parsed[0]
        return OTHER_MODEL

    def is_upstream(self, model: str | None) -> bool:
        entry = self.settings.find_model(model) if model else None
        return entry is not None and not entry.litellm_params.is_local

    def observe_served(self, model: str | None, adapter_header: str) -> None:
        """Counts a served completion by the kind of adapter its ``X-Adapter`` response header names."""
        if adapter_header != "none":
            kind = "convention" if adapter_header.startswith(f"{CONVENTION_OWNER}/") else "partner"
        else:
            kind = "upstream" if self.is_upstream(model) else "none"
        self.requests_by_adapter_kind.labels(kind=kind).inc()

    def observe_turn(self, turn: Mapping[str, Any]) -> None:
        """Adds a stored turn's tokens; partner text counted in words instead of tokens is left out."""
        # NOTE: a turn stores only the first choice, so completion tokens of choices after the first (n > 1) and of
        # requests whose turn was not stored (client disconnected) are not counted.
        model = self.model_label(turn.get("served_model") or turn.get("model"))
        usage = turn.get("usage") if isinstance(turn.get("usage"), Mapping) else {}
        counts = {
            "prompt": usage.get("prompt_tokens"),
            "completion": usage.get("completion_tokens"),
            "planning": turn.get("planning_tokens"),
        }
        if turn.get("partner_tokens_unit") == TOKENS:
            counts["partner"] = turn.get("partner_tokens")
        for kind, count in counts.items():
            if isinstance(count, int) and count > 0:
                self.tokens.labels(model=model, kind=kind).inc(count)
