"""Partner metrics and the partner list over HTTP, from real chat sessions stored in Redis on the tiny model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from transformers import AutoTokenizer

from adapters.keys import Keys
from adapters.registry import AdapterRegistry, AdapterVersion
from adapters.settings import Settings
from gateway.partner_tokens import engine_counter, new_partner_texts
from tests.conftest import TINY_MODEL_NAME, RunningGateway
from trainer.mining import find_rementions, session_transcript

LONG_MUG = "I keep my pens in the small red ceramic mug with the chipped handle on my desk."
SHORT_MUG = "Yesterday I cleaned everything on my desk and washed the chipped mug carefully."
SHORTER_MUG = "This morning I filled the mug with fresh coffee again."
LONG_LAMP = "Please describe the tall brass reading lamp beside my green sofa."
SHORT_LAMP = "After dinner I switched off the brass lamp for the night."


def chat(gateway: RunningGateway, partner: str, messages: list[dict[str, str]]) -> httpx.Response:
    body = {"model": TINY_MODEL_NAME, "messages": messages, "max_tokens": 8, "temperature": 0}
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers={"X-Partner-ID": partner}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def converse(gateway: RunningGateway, partner: str, user_messages: list[str]) -> str:
    """Sends each user message after the conversation so far, as OpenAI clients do; returns the session id."""
    messages: list[dict[str, str]] = []
    session_ids = set()
    for content in user_messages:
        messages.append({"role": "user", "content": content})
        response = chat(gateway, partner, messages)
        messages.append({"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]})
        session_ids.add(response.headers["x-session-id"])
    assert len(session_ids) == 1
    return session_ids.pop()


def stored_sessions(gateway: RunningGateway, partner: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{gateway.base_url}/v1/partners/{partner}/sessions", timeout=10)
    return {session["id"]: session for session in response.json()["data"]}


def metrics(gateway: RunningGateway, partner: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/v1/partners/{partner}/metrics", params=params, timeout=30)


def expected_session(turns: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Computes a session's metrics from its stored turns, independently of the gateway's code."""
    partner_tokens = 0
    for turn in turns:
        request = turn["messages"]
        last_assistant = max((i for i, m in enumerate(request) if m["role"] == "assistant"), default=-1)
        new_user = [m["content"] for m in request[last_assistant + 1 :] if m["role"] == "user"]
        partner_tokens += sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in new_user)
    rementions = find_rementions(session_transcript(turns))
    ratios = [len(r.later.text.split()) / len(r.first.text.split()) for r in rementions]
    planning = [turn["planning_tokens"] for turn in turns]
    return {
        "turns": len(turns),
        "model_tokens_per_turn": sum(turn["usage"]["completion_tokens"] for turn in turns) / len(turns),
        "partner_tokens_per_turn": partner_tokens / len(turns),
        "rementions": len(rementions),
        "remention_compression": sum(ratios) / len(ratios) if ratios else None,
        "planning_token_rate": sum(planning) / len(planning),
        "completion_tokens": sum(turn["usage"]["completion_tokens"] for turn in turns),
        "partner_tokens": partner_tokens,
        "ratios": ratios,
        "planning_tokens": sum(planning),
    }


@pytest.fixture()
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture()
def alice_sessions(gateway: RunningGateway) -> list[str]:
    """Three sessions of partner alice, oldest first: two with re-mentions, one with a single short turn."""
    first = converse(gateway, "alice", [LONG_MUG, SHORT_MUG, SHORTER_MUG])
    second = converse(gateway, "alice", [LONG_LAMP, SHORT_LAMP])
    third = converse(gateway, "alice", ["Where is the chipped mug now?"])
    return [first, second, third]


def test_turns_store_partner_tokens(gateway: RunningGateway, alice_sessions: list[str], tokenizer: Any) -> None:
    turns = stored_sessions(gateway, "alice")[alice_sessions[0]]["turns"]
    expected = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (LONG_MUG, SHORT_MUG)]

    assert [turn["partner_tokens"] for turn in turns[:2]] == expected
    assert {turn["partner_tokens_unit"] for turn in turns} == {"tokens"}


def test_metrics_match_stored_turns(gateway: RunningGateway, alice_sessions: list[str], tokenizer: Any) -> None:
    stored = stored_sessions(gateway, "alice")
    body = metrics(gateway, "alice").json()
    by_id = {session["session_id"]: session for session in body["sessions"]}

    for session_id in alice_sessions:
        expected = expected_session(stored[session_id]["turns"], tokenizer)
        reported = by_id[session_id]
        for name in ("turns", "rementions", "remention_compression"):
            assert reported[name] == expected[name], f"{session_id} {name}"
        for name in ("model_tokens_per_turn", "partner_tokens_per_turn", "planning_token_rate"):
            assert reported[name] == pytest.approx(expected[name]), f"{session_id} {name}"
        assert reported["adapters"] == ["none"]
        assert reported["created_at"] == stored[session_id]["created_at"]


def test_rementions_get_shorter(gateway: RunningGateway, alice_sessions: list[str]) -> None:
    sessions = metrics(gateway, "alice").json()["sessions"]

    assert sessions[0]["rementions"] >= 2
    assert sessions[1]["rementions"] >= 1
    assert sessions[0]["remention_compression"] < 1


def test_totals_add_up_sessions(gateway: RunningGateway, alice_sessions: list[str], tokenizer: Any) -> None:
    stored = stored_sessions(gateway, "alice")
    expected = [expected_session(stored[session_id]["turns"], tokenizer) for session_id in alice_sessions]
    turns = sum(session["turns"] for session in expected)
    ratios = [ratio for session in expected for ratio in session["ratios"]]
    totals = metrics(gateway, "alice").json()["totals"]

    assert totals["sessions"] == 3
    assert totals["turns"] == turns
    assert totals["rementions"] == len(ratios)
    assert totals["remention_compression"] == pytest.approx(sum(ratios) / len(ratios))
    assert totals["model_tokens_per_turn"] == pytest.approx(sum(s["completion_tokens"] for s in expected) / turns)
    assert totals["partner_tokens_per_turn"] == pytest.approx(sum(s["partner_tokens"] for s in expected) / turns)
    assert totals["planning_token_rate"] == pytest.approx(sum(s["planning_tokens"] for s in expected) / turns)


def test_sessions_listed_oldest_first(gateway: RunningGateway, alice_sessions: list[str]) -> None:
    body = metrics(gateway, "alice").json()

    assert body["object"] == "partner.metrics"
    assert body["partner_id"] == "alice"
    assert [session["session_id"] for session in body["sessions"]] == alice_sessions


def test_session_window_keeps_recent(gateway: RunningGateway, alice_sessions: list[str]) -> None:
    body = metrics(gateway, "alice", sessions=2).json()

    assert [session["session_id"] for session in body["sessions"]] == alice_sessions[1:]
    assert body["totals"]["sessions"] == 2
    assert body["session_count"] == len(alice_sessions)


def test_bare_model_adapter_is_none(gateway: RunningGateway, alice_sessions: list[str]) -> None:
    assert metrics(gateway, "alice").json()["adapter"] == {"in_use": "none", "active_version": None}


def test_active_adapter_reported(
    gateway: RunningGateway, alice_sessions: list[str], tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    folder = Path(tiny_settings.artifact_dir) / "alice" / "1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    adapter = AdapterVersion(
        partner_id="alice", version=1, base_model=TINY_MODEL_NAME, path=str(folder), created_at=int(time.time())
    )
    AdapterRegistry(redis_client, Keys(tiny_settings.key_prefix)).register(adapter, activate=True)

    assert metrics(gateway, "alice").json()["adapter"] == {"in_use": "alice/1", "active_version": 1}


def test_unknown_partner_returns_404(gateway: RunningGateway) -> None:
    response = metrics(gateway, "nobody")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "partner_not_found"


@pytest.mark.parametrize(
    ("partner", "params", "param"),
    [("bad*id", {}, "partner_id"), ("alice", {"sessions": 0}, "sessions"), ("alice", {"sessions": 501}, "sessions")],
)
def test_invalid_metrics_request_rejected(
    gateway: RunningGateway, partner: str, params: dict[str, Any], param: str
) -> None:
    response = metrics(gateway, partner, **params)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def cache_entry(redis_client: redis.Redis, settings: Settings, session_id: str) -> dict[str, Any]:
    raw = redis_client.get(Keys(settings.key_prefix).session_metrics("alice", session_id))
    assert raw is not None
    return dict(json.loads(raw))


def test_cache_reused_while_unchanged(
    gateway: RunningGateway, alice_sessions: list[str], tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    metrics(gateway, "alice")
    key = Keys(tiny_settings.key_prefix).session_metrics("alice", alice_sessions[2])
    entry = cache_entry(redis_client, tiny_settings, alice_sessions[2])
    # A marker value that a recomputation would never produce shows whether the cached entry was used.
    entry["sums"]["rementions"] = 99
    redis_client.set(key, json.dumps(entry))

    assert metrics(gateway, "alice").json()["sessions"][2]["rementions"] == 99


def test_new_turn_invalidates_cache(
    gateway: RunningGateway, alice_sessions: list[str], tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    metrics(gateway, "alice")
    key = Keys(tiny_settings.key_prefix).session_metrics("alice", alice_sessions[1])
    entry = cache_entry(redis_client, tiny_settings, alice_sessions[1])
    entry["sums"]["rementions"] = 99
    redis_client.set(key, json.dumps(entry))
    turns = stored_sessions(gateway, "alice")[alice_sessions[1]]["turns"]
    history = [*turns[-1]["messages"], turns[-1]["response"]]

    chat(gateway, "alice", [*history, {"role": "user", "content": "Is the brass lamp still on?"}])
    reported = metrics(gateway, "alice").json()["sessions"][1]

    assert reported["turns"] == 3
    assert reported["rementions"] != 99
    assert cache_entry(redis_client, tiny_settings, alice_sessions[1])["turn_count"] == 3


def test_old_turns_counted_at_read(
    gateway: RunningGateway, alice_sessions: list[str], tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    before = metrics(gateway, "alice").json()["sessions"][0]["partner_tokens_per_turn"]
    keys = Keys(tiny_settings.key_prefix)
    turns_key = keys.session_turns("alice", alice_sessions[0])
    for index, raw in enumerate(redis_client.lrange(turns_key, 0, -1)):
        turn = json.loads(raw)
        del turn["partner_tokens"], turn["partner_tokens_unit"]
        redis_client.lset(turns_key, index, json.dumps(turn))
    redis_client.delete(keys.session_metrics("alice", alice_sessions[0]))

    assert metrics(gateway, "alice").json()["sessions"][0]["partner_tokens_per_turn"] == before


def test_partner_list_pages_by_id(gateway: RunningGateway) -> None:
    for partner in ("carol", "alice", "bob"):
        converse(gateway, partner, [f"Hello, I am {partner}."])

    first = httpx.get(f"{gateway.base_url}/v1/partners", params={"limit": 2}, timeout=10).json()
    second = httpx.get(f"{gateway.base_url}/v1/partners", params={"limit": 2, "after": "bob"}, timeout=10).json()

    assert [partner["id"] for partner in first["data"]] == ["alice", "bob"]
    assert first["has_more"] is True
    assert [partner["id"] for partner in second["data"]] == ["carol"]
    assert second["has_more"] is False


def test_partner_list_counts_sessions(gateway: RunningGateway, alice_sessions: list[str]) -> None:
    stored = stored_sessions(gateway, "alice")
    listed = httpx.get(f"{gateway.base_url}/v1/partners", timeout=10).json()["data"]

    assert listed == [
        {
            "id": "alice",
            "object": "partner",
            "session_count": 3,
            "updated_at": max(session["updated_at"] for session in stored.values()),
        }
    ]


@pytest.mark.parametrize(("params", "param"), [({"limit": 0}, "limit"), ({"after": "bad*id"}, "after")])
def test_invalid_partner_list_rejected(gateway: RunningGateway, params: dict[str, Any], param: str) -> None:
    response = httpx.get(f"{gateway.base_url}/v1/partners", params=params, timeout=10)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_long_message_tokens_counted(gateway: RunningGateway, tokenizer: Any) -> None:
    # Longer than INLINE_MAX_CHARS, so the count runs in a worker thread.
    long_text = " ".join([LONG_MUG] * 20)
    converse(gateway, "dave", [long_text])
    turn = next(iter(stored_sessions(gateway, "dave").values()))["turns"][0]

    assert turn["partner_tokens"] == len(tokenizer(long_text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(
    ("messages", "extra", "expected"),
    [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], {}, ["Hi"]),
        (
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "second"},
                {"role": "user", "content": "third"},
            ],
            {},
            ["second", "third"],
        ),
        (
            [{"role": "user", "content": "Describe it"}, {"role": "assistant", "content": "It is"}],
            {"continue_final_message": True},
            ["Describe it"],
        ),
    ],
)
def test_new_partner_texts_cases(messages: list[dict[str, str]], extra: dict[str, Any], expected: list[str]) -> None:
    assert new_partner_texts({"messages": messages, **extra}) == expected


def test_counter_without_engine_counts_words() -> None:
    assert engine_counter(None)(["the small red mug", "again"]) == (5, "words")
