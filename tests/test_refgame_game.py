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
from clients.refgame.gateway_client import GatewayClient, GatewayError
from clients.retry import RetryPolicy
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


class FakeGateway:
    """A MockTransport handler that serves any model, rejects tokenization (so no tokens are counted) and responds to
    chat completions. Chat completions after the first ``fail_after`` get ``fail_status`` with Retry-After."""

    def __init__(self, *, fail_after: int | None = None, fail_status: int = 503) -> None:
        self.fail_after = fail_after
        self.fail_status = fail_status
        self.chats = 0
        self.speaker_sessions: list[str] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.startswith("/v1/models/"):
            return httpx.Response(200, json={"id": path.removeprefix("/v1/models/"), "object": "model"})
        if path == "/tokenize":
            return httpx.Response(400, json={"error": {"message": "not local", "code": "unsupported_model"}})
        if path != "/v1/chat/completions":
            return httpx.Response(404, json={"error": {"message": f"no route {path}"}})
        if self.fail_after is not None and self.chats >= self.fail_after:
            error = {"error": {"message": "engine overloaded", "code": "engine_overloaded"}}
            return httpx.Response(self.fail_status, json=error, headers={"Retry-After": "1"})
        self.chats += 1
        partner = request.headers["X-Partner-ID"]
        if not partner.endswith("-listener"):
            self.speaker_sessions.append(request.headers["X-Session-ID"])
        text = "1" if partner.endswith("-listener") else "a small round thing"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 3}})


def use_fake_gateway(monkeypatch: pytest.MonkeyPatch, fake: FakeGateway) -> None:
    """Makes run_refgame talk to ``fake`` through httpx.MockTransport, with two retries and no real waiting."""

    def make_client(base_url: str, **_: Any) -> GatewayClient:
        client = GatewayClient(base_url, retry=RetryPolicy(max_retries=2, sleep=fake.sleeps.append))
        client.http.close()
        client.http = httpx.Client(transport=httpx.MockTransport(fake.handle))
        return client

    monkeypatch.setattr("clients.refgame.runner.GatewayClient", make_client)


def two_contexts(tmp_path: Path) -> Path:
    items = [{"word": word} for word in ("teapot", "mug", "saucepan", "jug")]
    contexts = [{"id": "first", "items": items}, {"id": "second", "items": items}]
    path = tmp_path / "contexts.json"
    path.write_text(json.dumps({"contexts": contexts}))
    return path


def fake_config(tmp_path: Path, *speakers: str, **overrides: Any) -> RefGameConfig:
    values: dict[str, Any] = {
        "speakers": [parse_speaker(value) for value in speakers],
        "listener": "m",
        "contexts_path": two_contexts(tmp_path),
        "games": 2,
        "repetitions": 1,
        "output_dir": tmp_path / "out",
        "base_url": "http://gateway.test/v1",
    }
    return RefGameConfig(**{**values, **overrides})


def test_client_retries_overloaded_gateway() -> None:
    answers = iter([503, 429, 200])
    sleeps: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status != 200:
            return httpx.Response(status, headers={"Retry-After": "3"}, json={"error": {"message": "busy"}})
        choice = {"message": {"content": "a thing"}}
        return httpx.Response(200, json={"choices": [choice]})

    client = GatewayClient("http://gateway.test/v1", retry=RetryPolicy(sleep=sleeps.append))
    client.http = httpx.Client(transport=httpx.MockTransport(handle))
    reply = client.chat(model="m", messages=[{"role": "user", "content": "hi"}], headers={})

    assert reply.text == "a thing"
    assert sleeps == [3.0, 3.0]


def test_client_retry_after_capped() -> None:
    responses = [httpx.Response(503, headers={"Retry-After": "86400"}), httpx.Response(200, json={"id": "m"})]
    sleeps: list[float] = []
    client = GatewayClient("http://gateway.test/v1", retry=RetryPolicy(max_wait_s=30.0, sleep=sleeps.append))
    client.http = httpx.Client(transport=httpx.MockTransport(lambda request: responses.pop(0)))

    client.check_model("m", "refgame")

    assert sleeps == [30.0]


def test_client_retries_reset_connection() -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json={"id": "m"})

    sleeps: list[float] = []
    client = GatewayClient("http://gateway.test/v1", retry=RetryPolicy(backoff_s=0.5, sleep=sleeps.append))
    client.http = httpx.Client(transport=httpx.MockTransport(handle))
    client.check_model("m", "refgame")

    assert len(calls) == 2
    assert sleeps == [0.5]


def test_client_gives_up_after_retries() -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(502, json={"error": {"message": "bad gateway"}})

    sleeps: list[float] = []
    client = GatewayClient("http://gateway.test/v1", retry=RetryPolicy(max_retries=3, sleep=sleeps.append))
    client.http = httpx.Client(transport=httpx.MockTransport(handle))

    with pytest.raises(GatewayError) as caught:
        client.chat(model="m", messages=[], headers={})
    assert caught.value.status_code == 502
    assert len(calls) == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_failed_game_keeps_finished_games(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # One game of one repetition is 4 trials, each a speaker and a listener request, so call 9 is in game 2.
    fake = FakeGateway(fail_after=8)
    use_fake_gateway(monkeypatch, fake)

    with pytest.raises(GatewayError, match="HTTP 503"):
        run_refgame(fake_config(tmp_path, "a=m", "b=m"), show_progress=False)

    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert stored["complete"] is False
    assert "HTTP 503" in stored["error"]
    assert [speaker["label"] for speaker in stored["speakers"]] == ["a"]
    assert len(stored["speakers"][0]["games"]) == 1
    assert len(stored["trials"]) == 4
    with (tmp_path / "out" / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert fake.sleeps == [1.0, 1.0]


def test_finished_run_marked_complete(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_gateway(monkeypatch, FakeGateway())

    results = run_refgame(fake_config(tmp_path, "a=m"), show_progress=False)

    assert results["complete"] is True
    assert results["error"] is None
    assert json.loads((tmp_path / "out" / "results.json").read_text())["complete"] is True


def test_command_writes_partial_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_gateway(monkeypatch, FakeGateway(fail_after=8))
    contexts = two_contexts(tmp_path)
    arguments = ["eval", "refgame", "--speaker", "m", "--listener", "m", "--contexts", str(contexts), "--games", "2"]
    arguments += ["--repetitions", "1", "--base-url", "http://gateway.test/v1", "--output", str(tmp_path / "out")]

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 3, result.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["complete"] is False


def test_speakers_with_same_slug_get_own_sessions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeGateway()
    use_fake_gateway(monkeypatch, fake)

    run_refgame(fake_config(tmp_path, "x y=m", "x-y=m", "✓=m", "✗=m", games=1), show_progress=False)

    sessions = list(dict.fromkeys(fake.speaker_sessions))
    assert len(sessions) == 4


@pytest.mark.parametrize(
    ("partner", "listener", "message"),
    [
        ("../../etc", "embedding", "invalid partner id '../../etc'"),
        ("bad id", "embedding", "invalid partner id 'bad id'"),
        ("p" * 120, "m", "-listener"),
    ],
)
def test_invalid_partner_rejected(partner: str, listener: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RefGameConfig(speakers=[parse_speaker("m")], listener=listener, partner_id=partner)


def test_command_rejects_partner_before_requests() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    result = invoke("--speaker", "m", "--partner", "../../etc", "--base-url", unreachable)

    assert result.exit_code == 2, result.output
    assert "invalid partner id" in result.output


def test_command_base_url_needs_v1() -> None:
    result = invoke("--speaker", "m", "--base-url", f"http://127.0.0.1:{free_port()}")

    assert result.exit_code == 2, result.output
    assert "ends in /v1" in result.output
