"""The reference game end to end against a gateway on the tiny model, and the command's errors."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clients.cli import app
from clients.refgame import RefGameConfig, parse_speaker, run_refgame
from tests.conftest import TINY_MODEL_NAME, RunningGateway, free_port

PARTNER = "refgame-test"


def sessions_of(gateway: RunningGateway, partner: str, expected_turns: int) -> list[dict[str, Any]]:
    """Returns the partner's sessions once ``expected_turns`` turns are stored; turns are written in the background."""
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{gateway.base_url}/v1/partners/{partner}/sessions", timeout=10)
        sessions = response.json()["data"]
        if sum(len(session["turns"]) for session in sessions) >= expected_turns or time.monotonic() > deadline:
            return sessions
        time.sleep(0.2)


def config_for(gateway: RunningGateway, tmp_path: Path, **overrides: Any) -> RefGameConfig:
    values: dict[str, Any] = {
        "speakers": [parse_speaker(f"tiny={TINY_MODEL_NAME}")],
        "listener": "embedding",
        "games": 1,
        "repetitions": 2,
        "output_dir": tmp_path / "out",
        "base_url": f"{gateway.base_url}/v1",
        "partner_id": PARTNER,
        "max_tokens": 12,
        "max_retries": 1,
    }
    return RefGameConfig(**{**values, **overrides})


def test_game_writes_all_outputs(gateway: RunningGateway, tmp_path: Path) -> None:
    results = run_refgame(config_for(gateway, tmp_path), show_progress=False)
    out = tmp_path / "out"

    for name in ("results.json", "trials.csv", "summary.csv", "refgame.png"):
        assert (out / name).stat().st_size > 0, name
    stored = json.loads((out / "results.json").read_text())
    assert len(stored["trials"]) == 8
    assert stored["config"]["repetitions"] == 2
    with (out / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8
    aggregate = results["speakers"][0]["aggregate"]
    assert len(aggregate["words_by_repetition"]) == 2
    assert all(isinstance(value, float | int) for value in aggregate["tokens_by_repetition"])


def test_game_is_one_partner_session(gateway: RunningGateway, tmp_path: Path) -> None:
    results = run_refgame(config_for(gateway, tmp_path), show_progress=False)
    attempts = sum(trial["attempts"] for trial in results["trials"])

    sessions = sessions_of(gateway, PARTNER, attempts)
    assert len(sessions) == 1
    assert sessions[0]["id"] == results["trials"][0]["session_id"]
    assert len(sessions[0]["turns"]) == attempts


def test_trials_cover_each_item_per_repetition(gateway: RunningGateway, tmp_path: Path) -> None:
    results = run_refgame(config_for(gateway, tmp_path), show_progress=False)
    trials = results["trials"]

    for repetition in (1, 2):
        targets = sorted(trial["target"] for trial in trials if trial["repetition"] == repetition)
        assert targets == sorted(trials[0]["shown"])


def test_logit_bias_bans_target_tokens(gateway: RunningGateway, tmp_path: Path) -> None:
    results = run_refgame(config_for(gateway, tmp_path, output_dir=None), show_progress=False)

    game = results["speakers"][0]["games"][0]
    assert game["logit_bias_entries"] > 0


def test_model_listener_has_own_partner(gateway: RunningGateway, tmp_path: Path) -> None:
    config = config_for(gateway, tmp_path, listener=TINY_MODEL_NAME, repetitions=1, output_dir=None)
    results = run_refgame(config, show_progress=False)

    listener_sessions = sessions_of(gateway, f"{PARTNER}-listener", 4)
    assert len(listener_sessions) == 1
    assert len(listener_sessions[0]["turns"]) == 4
    speaker_turns = sum(len(session["turns"]) for session in sessions_of(gateway, PARTNER, 4))
    assert speaker_turns == sum(trial["attempts"] for trial in results["trials"])


def test_bare_speaker_served_without_adapter(gateway: RunningGateway, tmp_path: Path) -> None:
    speakers = [parse_speaker(f"bare={TINY_MODEL_NAME}@none")]
    results = run_refgame(config_for(gateway, tmp_path, speakers=speakers, output_dir=None), show_progress=False)

    assert {trial["adapter"] for trial in results["trials"]} == {"none"}


def invoke(*arguments: str) -> Any:
    return CliRunner().invoke(app, ["eval", "refgame", "--listener", "embedding", *arguments])


def test_unreachable_gateway_reported(tmp_path: Path) -> None:
    result = invoke("--speaker", "m", "--base-url", f"http://127.0.0.1:{free_port()}/v1")

    assert result.exit_code == 3
    assert "no gateway responds at" in result.output


def test_unknown_model_reported(gateway: RunningGateway) -> None:
    result = invoke("--speaker", "no-such-model", "--base-url", f"{gateway.base_url}/v1")

    assert result.exit_code == 2
    assert "unknown model" in result.output
    assert "no-such-model" in result.output


def test_bad_contexts_file_reported(tmp_path: Path) -> None:
    contexts = tmp_path / "contexts.json"
    contexts.write_text(json.dumps({"contexts": [{"id": "x", "items": []}]}))
    result = invoke("--speaker", "m", "--contexts", str(contexts))

    assert result.exit_code == 2
    assert "context 1 (id 'x'): has 0 items" in result.output


def test_unwritable_output_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("--speaker", "m", "--output", str(blocker / "out"))

    assert result.exit_code == 2
    assert "is not writable" in result.output


def test_duplicate_speaker_labels_rejected() -> None:
    with pytest.raises(ValueError, match="labels must be unique"):
        RefGameConfig(speakers=[parse_speaker("a=m"), parse_speaker("a=n")])
