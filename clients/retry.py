"""Retrying requests that fail for a moment: HTTP 429, 502, 503 and 504 responses and dropped connections.

The gateway returns 503 with ``Retry-After`` while the model loads and while too many requests wait, so the
evaluation clients wait and send the same request again a bounded number of times before they give up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The connection was reset or closed after it was opened. A refused connection (httpx.ConnectError) is not retried,
# so a gateway that is not running is reported at once.
# NOTE: when the connection drops after the gateway generated a reply, the retried chat completion can store the
# turn a second time in the partner's session.
RETRY_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a failed request again.

    Without a ``Retry-After`` header the wait starts at ``backoff_s`` and doubles on each retry. Every wait,
    including one that ``Retry-After`` requests, is at most ``max_wait_s`` seconds.
    """

    max_retries: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def wait_s(self, retry: int, response: httpx.Response | None) -> float:
        """Returns the seconds to wait before retry number ``retry`` (0 for the first retry)."""
        requested = retry_after_s(response) if response is not None else None
        wait = requested if requested is not None else self.backoff_s * 2**retry
        return min(wait, self.max_wait_s)


def retry_after_s(response: httpx.Response) -> float | None:
    """Returns the wait that the ``Retry-After`` header requests in seconds, or None when it is missing or invalid.

    The header contains either a number of seconds or an HTTP date (RFC 9110, section 10.2.3).
    """
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def send_with_retries(
    http: httpx.Client, method: str, url: str, *, policy: RetryPolicy, **kwargs: Any
) -> httpx.Response:
    """Sends a request and sends it again after a retryable failure, at most ``policy.max_retries`` times.

    Returns the last response, which may still have a retryable status, and raises the last transport error.
    Other transport errors are raised at once.
    """
    retry = 0
    while True:
        try:
            response = http.request(method, url, **kwargs)
        except RETRY_ERRORS as error:
            if retry >= policy.max_retries:
                raise
            wait = policy.wait_s(retry, None)
            reason = f"{type(error).__name__}: {error}"
        else:
            if response.status_code not in RETRY_STATUSES or retry >= policy.max_retries:
                return response
            wait = policy.wait_s(retry, response)
            reason = f"HTTP {response.status_code}"
        retry += 1
        logger.warning(
            "%s %s failed (%s); retry %d of %d in %.1f s", method, url, reason, retry, policy.max_retries, wait
        )
        policy.sleep(wait)
