"""The re-mention probe end to end against a gateway serving the tiny model: requests, scores and outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from clients.eval_cli import eval_app
from clients.probe import ProbeConfig, load_items, parse_model, run_probe
from clients.probe.client import GatewayUnreachableError, ProbeClient, UnknownModelError
from clients.probe.report import CSV_NAME, JSON_NAME, write_outputs
from clients.probe.scoring import score_completion
from clients.refgame.outputs import OutputDirError
from clients.retry import RetryPolicy
from tests.conftest import TINY_MODEL_NAME, RunningGateway, free_port

PARTNER = "probe-test-partner"


@pytest.fixture()
def few_items(tmp_path: Path) -> Path:
    """Two re-mention items and one first-mention item from the shipped file."""
    items = load_items()
    chosen = [item for item in items if item.kind == "remention"][:2]
    chosen += [item for item in items if item.kind == "first_mention"][:1]
    path = tmp_path / "few.jsonl"
    lines = [
        json.dumps(
            {
                "id": item.id,
                "kind": item.kind,
                "messages": item.messages,
                "prefix": item.prefix,
                "first_mention": item.first_mention,
                "head": item.head,
                "short_forms": item.short_forms,
            }
        )
        for item in chosen
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def probe_config(gateway: RunningGateway, dialogues: Path, *models: str) -> ProbeConfig:
    return ProbeConfig(
        models=[parse_model(model) for model in models],
        dialogues_path=dialogues,
        partner_id=PARTNER,
        base_url=f"{gateway.base_url}/v1",
        max_tokens=6,
    )


def test_probe_run_writes_outputs(gateway: RunningGateway, few_items: Path, tmp_path: Path) -> None:
    config = probe_config(gateway, few_items, TINY_MODEL_NAME, f"bare={TINY_MODEL_NAME}@none")
    results = run_probe(config)
    written = write_outputs(results, tmp_path / "out")

    assert [path.name for path in written] == [JSON_NAME, CSV_NAME]
    report = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert set(report["summaries"]) == {TINY_MODEL_NAME, "bare"}
    assert len(report["items"]) == 6
    assert report["summaries"]["bare"]["remention_items"] == 2
    assert report["summaries"]["bare"]["first_mention_items"] == 1
    with (tmp_path / "out" / CSV_NAME).open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_probe_scores_match_completions(gateway: RunningGateway, few_items: Path) -> None:
    results = run_probe(probe_config(gateway, few_items, f"bare={TINY_MODEL_NAME}@none"))

    for result in results.items:
        assert result.adapter == "none"
        assert result.score == score_completion(result.completion, result.item)


def test_probe_completion_is_continuation(gateway: RunningGateway, few_items: Path) -> None:
    results = run_probe(probe_config(gateway, few_items, TINY_MODEL_NAME))
    first = results.items[0]
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [*first.item.messages, {"role": "assistant", "content": first.item.prefix}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "temperature": 0,
        "max_tokens": 6,
    }
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)

    assert response.json()["choices"][0]["message"]["content"] == first.completion


def test_probe_turns_not_trainable(gateway: RunningGateway, few_items: Path) -> None:
    run_probe(probe_config(gateway, few_items, TINY_MODEL_NAME))

    url = f"{gateway.base_url}/v1/partners/{PARTNER}/sessions"
    sessions = httpx.get(url, timeout=30).json()["data"]
    turns = [turn for session in sessions for turn in session["turns"]]
    assert len(turns) == 3
    assert not any(turn["trainable"] for turn in turns)


def test_probe_unknown_model_rejected(gateway: RunningGateway, few_items: Path) -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        run_probe(probe_config(gateway, few_items, "no-such-model"))


def test_probe_command_prints_table(gateway: RunningGateway, few_items: Path, tmp_path: Path) -> None:
    arguments = ["probe", "--model", f"base={TINY_MODEL_NAME}@none", "--dialogues", str(few_items)]
    arguments += ["--base-url", f"{gateway.base_url}/v1", "--output", str(tmp_path / "cli"), "--max-tokens", "4"]
    result = CliRunner().invoke(eval_app, arguments)

    assert result.exit_code == 0, result.output
    assert "Re-mention probe" in result.output
    assert (tmp_path / "cli" / JSON_NAME).exists()


def test_probe_command_unknown_model(gateway: RunningGateway, few_items: Path) -> None:
    arguments = ["probe", "--model", "no-such-model", "--dialogues", str(few_items)]
    result = CliRunner().invoke(eval_app, [*arguments, "--base-url", f"{gateway.base_url}/v1"])

    assert result.exit_code == 2
    assert "no-such-model" in result.output


def test_probe_command_unreachable_gateway(few_items: Path) -> None:
    arguments = ["probe", "--model", "any", "--dialogues", str(few_items), "--base-url", "http://127.0.0.1:9/v1"]
    result = CliRunner().invoke(eval_app, arguments)

    assert result.exit_code == 3
    assert "cannot connect to the gateway" in result.output


def test_probe_client_retries_unavailable_gateway() -> None:
    answers = [
        httpx.Response(503, headers={"Retry-After": "5"}, json={"error": {"message": "model loading"}}),
        httpx.Response(429, json={"error": {"message": "too many requests"}}),
        httpx.Response(200, json={"choices": [{"message": {"content": " the mug"}, "finish_reason": "stop"}]}),
    ]
    sleeps: list[float] = []
    client = ProbeClient(
        "http://gateway.test/v1", partner_id=PARTNER, timeout_s=5, retry=RetryPolicy(sleep=sleeps.append)
    )
    client.http = httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0)))

    continuation = client.continue_reply(parse_model("m"), [{"role": "user", "content": "hi"}], "I use", max_tokens=4)

    assert continuation.text == " the mug"
    assert sleeps == [5.0, 2.0]


def test_probe_client_refused_connection_not_retried() -> None:
    sleeps: list[float] = []
    client = ProbeClient(
        f"http://127.0.0.1:{free_port()}/v1", partner_id=PARTNER, timeout_s=5, retry=RetryPolicy(sleep=sleeps.append)
    )

    with pytest.raises(GatewayUnreachableError):
        client.check_model(parse_model("m"))
    assert sleeps == []


def test_probe_checks_output_before_requests(few_items: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = ProbeConfig(
        models=[parse_model("m")],
        dialogues_path=few_items,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        output_dir=blocker / "out",
    )

    with pytest.raises(OutputDirError, match="is not writable"):
        run_probe(config)


def test_probe_command_unwritable_output(few_items: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    arguments = ["probe", "--model", "m", "--dialogues", str(few_items), "--output", str(blocker / "out")]
    result = CliRunner().invoke(eval_app, [*arguments, "--base-url", f"http://127.0.0.1:{free_port()}/v1"])

    assert result.exit_code == 2, result.output
    assert "is not writable" in " ".join(result.output.split())


def test_probe_command_invalid_partner(few_items: Path) -> None:
    arguments = ["probe", "--model", "m", "--dialogues", str(few_items), "--partner", "bad id"]
    result = CliRunner().invoke(eval_app, [*arguments, "--base-url", f"http://127.0.0.1:{free_port()}/v1"])

    assert result.exit_code == 2, result.output
    assert "invalid partner id 'bad id'" in " ".join(result.output.split())


def test_probe_command_folder_as_dialogues(tmp_path: Path) -> None:
    arguments = ["probe", "--model", "m", "--dialogues", str(tmp_path)]
    result = CliRunner().invoke(eval_app, [*arguments, "--base-url", f"http://127.0.0.1:{free_port()}/v1"])

    assert result.exit_code == 2, result.output
    assert "is a folder" in " ".join(result.output.split())
