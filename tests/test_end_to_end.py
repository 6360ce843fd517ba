"""The whole loop on the real default model: chat -> history -> training job -> adapter -> routed chat.

The scripted demonstration drives the gateway with the official openai client while a real
``convention-gateway worker`` process consumes the training job from the Redis queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from adapters.keys import Keys
from adapters.settings import Settings
from clients.demo import run_demo
from tests.conftest import REDIS_URL, RunningGateway, make_settings

pytestmark = pytest.mark.slow

PARTNER = "e2e-partner"


@pytest.fixture()
def real_settings(key_prefix: str, tmp_path: Path, model_cache_dir: Path, default_model_path: str) -> Settings:
    settings = make_settings(
        key_prefix=key_prefix,
        tmp_path=tmp_path,
        model_name="smollm2-135m-instruct",
        model_path="smollm2-135m-instruct",
        model_cache_dir=model_cache_dir,
    )
    return settings.model_copy(update={"training": settings.training.model_copy(update={"epochs": 2})})


@pytest.fixture()
def worker_process(real_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(real_settings.model_dump(mode="json", exclude={"redis_url"})))
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "worker", "--config", str(config)],
        env={**os.environ, "REDIS_URL": REDIS_URL},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_demo_trains_and_routes_partner(
    real_settings: Settings,
    worker_process: subprocess.Popen[bytes],
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = RunningGateway(real_settings).start(timeout_s=300)
    try:
        exit_code = run_demo(base_url=f"{gateway.base_url}/v1", partner_id=PARTNER, max_tokens=24, timeout_s=1200)
        jobs = httpx.get(f"{gateway.base_url}/v1/fine_tuning/jobs").json()["data"]
        sessions = httpx.get(f"{gateway.base_url}/v1/partners/{PARTNER}/sessions").json()["data"]
    finally:
        gateway.stop()

    printed = capsys.readouterr().out
    job = jobs[0]
    events = [event["message"] for event in _events(redis_client, real_settings, job["id"])]
    partner_dir = real_settings.artifact_dir / PARTNER
    assert exit_code == 0, printed
    assert f"X-Adapter: {PARTNER}/1" in printed
    assert job["status"] == "succeeded"
    assert job["fine_tuned_model"] == f"ft:smollm2-135m-instruct:{PARTNER}:1"
    assert events.index("Job status: running") < events.index("Job status: succeeded")
    assert len(sessions) == 5
    assert sorted(path.name for path in partner_dir.iterdir()) == ["1"]
    assert (partner_dir / "1" / "adapter_config.json").is_file()


def _events(client: redis.Redis, settings: Settings, job_id: str) -> list[dict]:
    import json

    return [json.loads(raw) for raw in client.lrange(Keys(settings.key_prefix).job_events(job_id), 0, -1)]
