"""The comparison command: base model, convention adapter and partner adapter on the game and the probe."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner

from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER
from adapters.settings import Settings
from clients.cli import app
from clients.compare import CompareConfig, run_compare
from clients.compare.admin import CompareError, GatewayAdmin
from tests.conftest import TINY_MODEL_NAME, RunningGateway, free_port
from tests.test_routing import ask, register_adapter
from trainer import worker
from trainer.jobs import JobStore


def compare_config(gateway: RunningGateway, tmp_path: Path, partner: str, **changes: object) -> CompareConfig:
    values: dict[str, object] = {
        "model": TINY_MODEL_NAME,
        "partner_id": partner,
        "output_dir": tmp_path / "compare",
        "base_url": f"{gateway.base_url}/v1",
        "games": 1,
        "train_games": 0,
        "repetitions": 2,
        "probe_limit": 3,
    }
    values.update(changes)
    return CompareConfig(**values)  # type: ignore[arg-type]


@pytest.fixture()
def both_adapters(tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis) -> None:
    register_adapter(tiny_settings, tiny_model_path, CONVENTION_OWNER, redis_client)
    register_adapter(tiny_settings, tiny_model_path, "rita", redis_client)


def test_compare_rows_name_three_models(gateway: RunningGateway, tmp_path: Path, both_adapters: None) -> None:
    results = run_compare(compare_config(gateway, tmp_path, "rita"), console=Console(quiet=True))

    assert [row["label"] for row in results["rows"]] == ["base", "convention", "partner"]
    assert [row["model"] for row in results["rows"]] == [
        f"{TINY_MODEL_NAME}@none",
        f"ft:{TINY_MODEL_NAME}:{CONVENTION_OWNER}:1",
        f"ft:{TINY_MODEL_NAME}:rita:1",
    ]


def test_compared_models_served_as_named(gateway: RunningGateway, tmp_path: Path, both_adapters: None) -> None:
    config = compare_config(gateway, tmp_path, "rita")
    run_compare(config, console=Console(quiet=True))
    trials = json.loads((config.output_dir / "refgame" / "results.json").read_text())["trials"]
    served: dict[str, set[str]] = {}
    for trial in trials:
        served.setdefault(trial["speaker"], set()).add(trial["adapter"])

    assert served == {"base": {"none"}, "convention": {f"{CONVENTION_OWNER}/1"}, "partner": {"rita/1"}}


def test_compare_writes_table_and_files(gateway: RunningGateway, tmp_path: Path, both_adapters: None) -> None:
    config = compare_config(gateway, tmp_path, "rita")
    results = run_compare(config, console=Console(quiet=True))
    table = (config.output_dir / "compare.md").read_text().splitlines()
    stored = json.loads((config.output_dir / "compare.json").read_text())

    assert len(table) == 2 + len(results["rows"])
    assert stored["rows"] == results["rows"]
    assert (config.output_dir / "refgame" / "refgame.png").is_file()
    assert (config.output_dir / "probe" / "probe.csv").is_file()


def test_partner_without_adapter_needs_games(gateway: RunningGateway, tmp_path: Path) -> None:
    ask(gateway, "sam")

    with pytest.raises(CompareError, match="--train-games"):
        run_compare(compare_config(gateway, tmp_path, "sam"), console=Console(quiet=True))


def test_training_timeout_reported(gateway: RunningGateway, tmp_path: Path) -> None:
    config = compare_config(gateway, tmp_path, "tess", train_games=1, train_timeout_s=5)

    # No worker runs here, so the job that the played games start stays queued until the time limit.
    with pytest.raises(CompareError, match="still queued"):
        run_compare(config, console=Console(quiet=True))


def run_first_job(settings: Settings, client: redis.Redis, stop: threading.Event) -> None:
    """Runs the first training job that appears, as a worker would, so that it fails for lack of pairs."""
    store = JobStore(client, Keys(settings.key_prefix))
    while not stop.is_set():
        jobs = store.open_jobs()
        if jobs:
            worker.configure(settings)
            worker.run_training_job(jobs[0]["id"])
            return
        time.sleep(0.2)


def test_failed_training_still_compares(
    gateway: RunningGateway, tmp_path: Path, tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    stop = threading.Event()
    runner = threading.Thread(target=run_first_job, args=(tiny_settings, redis_client, stop), daemon=True)
    runner.start()
    config = compare_config(gateway, tmp_path, "uma", train_games=1, train_timeout_s=120)
    try:
        results = run_compare(config, console=Console(quiet=True))
    finally:
        stop.set()
        runner.join(timeout=60)
    table = (config.output_dir / "compare.md").read_text()

    assert results["training"]["status"] == "failed"
    assert [row["label"] for row in results["rows"]] == ["base"]
    assert results["training"]["error"]["message"] in table


def test_admin_escapes_partner_in_paths() -> None:
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        if request.method == "POST":
            return httpx.Response(200, json={"id": "ftjob-1", "status": "queued"})
        return httpx.Response(200, json={"active_version": None, "data": [{"version": 2}]})

    admin = GatewayAdmin("http://gateway.test/v1")
    admin.http = httpx.Client(transport=httpx.MockTransport(handle))

    assert admin.partner_version("carol#x") == 2
    assert admin.start_training("x/../../partners/bob") == "ftjob-1"
    assert paths == [
        "/v1/partners/carol%23x/adapters",
        "/v1/partners/x%2F..%2F..%2Fpartners%2Fbob/adapters",
    ]


@pytest.mark.parametrize("partner", ["carol#x", "x/../../partners/bob", "bad id", "p" * 129])
def test_compare_rejects_invalid_partner(tmp_path: Path, partner: str) -> None:
    with pytest.raises(ValueError, match="invalid partner id"):
        CompareConfig(model=TINY_MODEL_NAME, partner_id=partner, output_dir=tmp_path / "compare")


def test_compare_command_invalid_partner(tmp_path: Path) -> None:
    arguments = ["eval", "compare", "--partner", "carol#x", "--train-games", "0", "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*arguments, "--base-url", f"http://127.0.0.1:{free_port()}/v1"])

    assert result.exit_code == 2, result.output
    assert "invalid partner id" in result.output
