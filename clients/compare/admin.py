"""The management calls the comparison needs: find adapter versions, start a training job and follow it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from adapters.registry import CONVENTION_OWNER, parse_adapter_model_id

TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
POLL_INTERVAL_S = 2.0


class CompareError(RuntimeError):
    """An error that stops the comparison; the message gives the cause and the fix."""


class GatewayAdmin:
    """Management API of one gateway; ``base_url`` is its OpenAI base URL, ending in ``/v1``."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        try:
            response = self.http.get(f"{self.base_url}{path}", headers=headers)
        except httpx.TransportError as error:
            message = f"no gateway responds at {self.base_url} ({error}); start it or pass --base-url"
            raise CompareError(message) from error
        if response.status_code >= 400:
            raise CompareError(f"GET {path} failed with HTTP {response.status_code}: {_error_text(response)}")
        return response.json()

    def convention_version(self, model: str) -> int | None:
        """Returns the newest convention adapter version listed for ``model``, or None when there is none."""
        listed = self._get("/models")["data"]
        versions = [
            parsed[2]
            for parsed in (parse_adapter_model_id(entry["id"]) for entry in listed)
            if parsed is not None and parsed[0] == model and parsed[1] == CONVENTION_OWNER
        ]
        return max(versions, default=None)

    def partner_version(self, partner_id: str) -> int | None:
        """Returns the partner's active adapter version, else its newest one, else None."""
        listing = self._get(f"/partners/{_segment(partner_id)}/adapters")
        if listing.get("active_version") is not None:
            return int(listing["active_version"])
        versions = [int(adapter["version"]) for adapter in listing["data"]]
        return max(versions, default=None)

    def start_training(self, partner_id: str) -> str:
        """Starts a training job for the partner, or returns the one already open; returns its id."""
        try:
            response = self.http.post(f"{self.base_url}/partners/{_segment(partner_id)}/adapters")
        except httpx.TransportError as error:
            raise CompareError(f"no gateway responds at {self.base_url} ({error})") from error
        if response.status_code == 409:
            open_job = self._get(f"/partners/{_segment(partner_id)}").get("open_job")
            if open_job:
                return str(open_job)
        if response.status_code >= 400:
            raise CompareError(f"starting a training job failed: {response.status_code} {_error_text(response)}")
        job = response.json()
        if job["status"] == "failed":
            raise CompareError(f"training job {job['id']} failed at once: {job.get('error')}")
        return str(job["id"])

    def wait_for_job(
        self, job_id: str, *, timeout_s: float, on_event: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Polls the job until it ends, passing each new event (oldest first) to ``on_event``; returns the job."""
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while True:
            events = self._get(f"/fine_tuning/jobs/{job_id}/events?limit=100")["data"]
            for event in reversed(events):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    on_event(event)
            job: dict[str, Any] = self._get(f"/fine_tuning/jobs/{job_id}")
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise CompareError(
                    f"training job {job_id} is still {job['status']} after {timeout_s:.0f} s; is a worker running "
                    "(convention-gateway worker)? Raise --train-timeout for slow machines"
                )
            time.sleep(POLL_INTERVAL_S)


def _segment(value: str) -> str:
    """Percent-encodes ``value`` as one URL path segment, so '/', '#' and '?' cannot change the path."""
    return quote(value, safe="")


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
