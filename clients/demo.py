"""A demonstration on real input: scripted sessions with one partner, training, then the adapter serving.

Only the partner's turns are scripted, and the model replies live. The partner first describes things at length
and later refers back to them in shorter forms, which is the convention signal the trainer mines.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

import httpx
from openai import OpenAI

DEMO_MODEL = "smollm2-135m-instruct"
POLL_INTERVAL_S = 2.0


def load_script() -> dict[str, Any]:
    text = (resources.files("clients") / "data" / "demo_sessions.json").read_text(encoding="utf-8")
    script: dict[str, Any] = json.loads(text)
    return script


def wait_until_ready(http: httpx.Client, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway at {http.base_url} was not ready after {timeout_s:.0f} s")
        print("waiting for the gateway to load the model ...")
        time.sleep(POLL_INTERVAL_S)


def play_sessions(client: OpenAI, script: dict[str, Any], partner_id: str, max_tokens: int) -> None:
    sessions = script["sessions"]
    for number, session in enumerate(sessions, start=1):
        messages: list[dict[str, str]] = []
        for turn, user_text in enumerate(session["user_turns"], start=1):
            messages.append({"role": "user", "content": user_text})
            raw = client.chat.completions.with_raw_response.create(
                model=DEMO_MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
                extra_headers={"X-Partner-ID": partner_id},
            )
            reply = raw.parse().choices[0].message.content or ""
            messages.append({"role": "assistant", "content": reply})
            print(
                f"session {number}/{len(sessions)} turn {turn}: X-Adapter {raw.headers.get('x-adapter')}, "
                f"session {raw.headers.get('x-session-id')}"
            )
            print(f"  partner: {user_text}")
            print(f"  model:   {_one_line(reply)}")


def wait_for_job(client: OpenAI, job_id: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    status, seen_events = "", set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):
            if event.id not in seen_events:
                seen_events.add(event.id)
                print(f"  [{event.level}] {event.message}")
        if job.status != status:
            status = job.status
            print(f"job {job_id}: {status}")
        if status in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"training job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def run_demo(*, base_url: str, partner_id: str | None, max_tokens: int, timeout_s: float) -> int:
    """Runs the demonstration; returns 0 when the partner ends up served by its new adapter."""
    script = load_script()
    partner_id = partner_id or script["partner_id"]
    root = base_url.rstrip("/").removesuffix("/v1")
    client = OpenAI(base_url=base_url, api_key="unused-by-the-gateway", max_retries=0, timeout=600)
    with httpx.Client(base_url=root, timeout=60) as http:
        wait_until_ready(http)
        print(f"== Playing {len(script['sessions'])} scripted sessions as partner {partner_id!r}")
        play_sessions(client, script, partner_id, max_tokens)

        print("== Starting a training job")
        response = http.post(f"/v1/partners/{partner_id}/adapters")
        if response.status_code == 409:
            # The training policy may already have started a job for this partner; follow that one.
            job_id = http.get(f"/v1/partners/{partner_id}").json()["open_job"]
            print(f"a training job is already open for {partner_id!r}: {job_id}")
        elif response.status_code == 200:
            job_id = response.json()["id"]
        else:
            print(f"starting the training job failed: {response.status_code} {response.text}")
            return 1
        job = wait_for_job(client, job_id, timeout_s)

    if job.status != "succeeded":
        print(f"training job {job.id} ended {job.status}: {job.error}")
        return 1
    return _show_adapter_serving(client, partner_id, max_tokens, script)


def _show_adapter_serving(client: OpenAI, partner_id: str, max_tokens: int, script: dict[str, Any]) -> int:
    print("== Asking again after training")
    question = script["sessions"][0]["user_turns"][0]
    raw = client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        extra_headers={"X-Partner-ID": partner_id},
    )
    adapter = raw.headers.get("x-adapter", "none")
    print(f"X-Adapter: {adapter}")
    print(f"  model:   {_one_line(raw.parse().choices[0].message.content or '')}")
    if not adapter.startswith(f"{partner_id}/"):
        print(f"expected the partner's adapter to serve, got {adapter!r}")
        return 1
    print(f"Partner {partner_id!r} is now served by adapter {adapter}.")
    return 0


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
