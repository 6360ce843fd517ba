"""Tests for the dialogue corpus format, the sample corpus and the ShareGPT and DailyDialog converters."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from trainer.corpus import (
    CorpusFormatError,
    Dialogue,
    convert,
    convert_dailydialog,
    convert_sharegpt,
    detokenize_dailydialog,
    load_corpus,
    write_corpus,
)
from trainer.mining import build_preference_pairs, find_rementions

DATA_DIR = Path(__file__).resolve().parents[1] / "trainer" / "data"
SAMPLE_CORPUS = DATA_DIR / "sample_corpus.jsonl"
SHAREGPT_FIXTURE = DATA_DIR / "sample_sharegpt.json"
DAILYDIALOG_FIXTURE = DATA_DIR / "sample_dailydialog.txt"


def dialogue_line(dialogue_id: str, *contents: str) -> str:
    """Return one corpus line whose messages alternate user and assistant."""
    roles = ["user", "assistant"]
    messages = [{"role": roles[index % 2], "content": content} for index, content in enumerate(contents)]
    return json.dumps({"id": dialogue_id, "messages": messages})


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# The sample corpus


def test_sample_corpus_size_and_ids() -> None:
    dialogues = load_corpus(SAMPLE_CORPUS)

    assert len(dialogues) >= 40
    assert len({dialogue.id for dialogue in dialogues}) == len(dialogues)


def test_sample_corpus_alternating_roles() -> None:
    for dialogue in load_corpus(SAMPLE_CORPUS):
        roles = [message["role"] for message in dialogue.messages]
        expected = ["user" if index % 2 == 0 else "assistant" for index in range(len(roles))]

        assert 6 <= len(roles) <= 12, dialogue.id
        assert roles == expected, dialogue.id


def test_sample_corpus_mining_yields_pairs() -> None:
    dialogues = load_corpus(SAMPLE_CORPUS)
    kinds: Counter[str] = Counter()
    dialogues_with_pairs = 0
    for dialogue in dialogues:
        pairs = build_preference_pairs(dialogue.messages, find_rementions(dialogue.messages))
        kinds.update(pair.kind for pair in pairs)
        dialogues_with_pairs += bool(pairs)

    assert kinds["remention"] + kinds["first_mention"] >= 100
    assert kinds["remention"] >= 40
    assert kinds["first_mention"] >= 40
    assert dialogues_with_pairs == len(dialogues)


def test_sample_corpus_separate_from_mining_sample() -> None:
    corpus = load_corpus(SAMPLE_CORPUS)
    labelled = load_corpus(DATA_DIR / "mining_sample.jsonl")
    corpus_texts = {message["content"] for dialogue in corpus for message in dialogue.messages}
    labelled_texts = {message["content"] for dialogue in labelled for message in dialogue.messages}

    assert {dialogue.id for dialogue in corpus}.isdisjoint(dialogue.id for dialogue in labelled)
    assert corpus_texts.isdisjoint(labelled_texts)


# Loading and writing


def test_round_trip_write_then_load(tmp_path: Path) -> None:
    dialogues = [
        Dialogue(
            id="café-1", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où?"}]
        ),
        Dialogue(id="two", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    ]
    path = tmp_path / "corpus.jsonl"

    count = write_corpus(dialogues, path)

    assert count == 2
    assert load_corpus(path) == dialogues
    assert "café-1" in path.read_text(encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_load_skips_blank_lines_and_extra_keys(tmp_path: Path) -> None:
    record = {
        "id": "kept",
        "source": "hand-written",
        "metadata": {"topic": "kitchen"},
        "messages": [{"role": "user", "content": "Hello", "name": "alice"}],
    }
    path = write_lines(tmp_path / "corpus.jsonl", "", json.dumps(record), "   ", dialogue_line("second", "Hi", "Hey"))

    dialogues = load_corpus(path)

    assert dialogues[0] == Dialogue(id="kept", messages=[{"role": "user", "content": "Hello"}])
    assert [dialogue.id for dialogue in dialogues] == ["kept", "second"]


@pytest.mark.parametrize(
    ("third_line", "expected"),
    [
        ('{"id": "broken", "messages": [', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        (json.dumps({"messages": [{"role": "user", "content": "Hi"}]}), 'missing "id"'),
        (json.dumps({"id": "", "messages": [{"role": "user", "content": "Hi"}]}), '"id" must be a non-empty string'),
        (json.dumps({"id": 7, "messages": [{"role": "user", "content": "Hi"}]}), '"id" must be a non-empty string'),
        (json.dumps({"id": "no-messages"}), 'missing "messages"'),
        (json.dumps({"id": "empty", "messages": []}), '"messages" must be a non-empty list'),
        (json.dumps({"id": "text", "messages": "Hi"}), '"messages" must be a non-empty list'),
        (json.dumps({"id": "bot", "messages": [{"role": "bot", "content": "Hi"}]}), "unknown role 'bot'"),
        (json.dumps({"id": "roleless", "messages": [{"content": "Hi"}]}), 'missing "role"'),
        (json.dumps({"id": "number", "messages": [{"role": "user", "content": 3}]}), '"content" must be a string'),
        (json.dumps({"id": "none", "messages": [{"role": "user"}]}), '"content" must be a string'),
        (json.dumps({"id": "flat", "messages": ["Hi"]}), "must be an object"),
        (dialogue_line("first", "Hi"), "duplicate id 'first', already used on line 1"),
    ],
)
def test_load_invalid_line_names_line(tmp_path: Path, third_line: str, expected: str) -> None:
    path = write_lines(tmp_path / "corpus.jsonl", dialogue_line("first", "Hi"), "", third_line)

    with pytest.raises(CorpusFormatError) as raised:
        load_corpus(path)

    assert str(raised.value).startswith(f"{path}:3: ")
    assert expected in str(raised.value)


def test_load_unknown_role_names_message(tmp_path: Path) -> None:
    record = {"id": "bot", "messages": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hello"}]}
    path = write_lines(tmp_path / "corpus.jsonl", json.dumps(record))

    with pytest.raises(CorpusFormatError, match=r":1: message 1 has unknown role 'model'; expected one of assistant"):
        load_corpus(path)


def test_load_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(dialogue_line("first", "Hi").encode() + b"\n" + b'{"id": "\xff"}\n')

    with pytest.raises(CorpusFormatError, match=r":2: invalid UTF-8"):
        load_corpus(path)


def test_write_invalid_dialogue_keeps_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "corpus.jsonl", dialogue_line("old", "Hi"))
    dialogues = [
        Dialogue(id="good", messages=[{"role": "user", "content": "Hi"}]),
        Dialogue(id="bad", messages=[{"role": "robot", "content": "Beep"}]),
    ]

    with pytest.raises(CorpusFormatError, match=r"dialogue 1 \(id 'bad'\): message 0 has unknown role 'robot'"):
        write_corpus(dialogues, path)

    assert [dialogue.id for dialogue in load_corpus(path)] == ["old"]
    assert sorted(item.name for item in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_write_duplicate_id_rejected(tmp_path: Path) -> None:
    dialogue = Dialogue(id="same", messages=[{"role": "user", "content": "Hi"}])

    with pytest.raises(CorpusFormatError, match=r"dialogue 1 \(id 'same'\): duplicate id;"):
        write_corpus([dialogue, dialogue], tmp_path / "corpus.jsonl")

    assert not (tmp_path / "corpus.jsonl").exists()


# ShareGPT


def test_sharegpt_fixture_roles_and_texts() -> None:
    dialogues = list(convert_sharegpt(SHAREGPT_FIXTURE))

    assert [dialogue.id for dialogue in dialogues] == ["share-garage-shelf", "sample_sharegpt-1", "share-packing", "42"]
    assert dialogues[0].messages == [
        {"role": "system", "content": "You are a helpful assistant for home repairs."},
        {"role": "user", "content": "The long metal shelf above my garage workbench is sagging in the middle."},
        {"role": "assistant", "content": "Add a bracket under the middle of the metal shelf, screwed into a stud."},
    ]
    assert [message["role"] for message in dialogues[1].messages] == ["user", "assistant", "user", "assistant"]
    assert dialogues[1].messages[2]["content"] == "And herbs?"
    assert [message["role"] for message in dialogues[2].messages] == ["user", "assistant"]
    assert [message["role"] for message in dialogues[3].messages] == ["user", "assistant", "user", "assistant"]
    assert dialogues[3].messages[3]["content"].startswith("Most phones also stop at full charge")


def test_sharegpt_jsonl_generates_missing_ids(tmp_path: Path) -> None:
    first = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "bing", "value": "Hello"}]}
    second = {"conversations": [{"from": "user", "value": "Ping"}, {"from": "assistant", "value": "Pong"}]}
    path = write_lines(tmp_path / "chats.jsonl", json.dumps(first), "", json.dumps(second))

    dialogues = list(convert_sharegpt(path))

    assert dialogues == [
        Dialogue(id="a", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        Dialogue(
            id="chats-1", messages=[{"role": "user", "content": "Ping"}, {"role": "assistant", "content": "Pong"}]
        ),
    ]


def test_sharegpt_unknown_from_names_item(tmp_path: Path) -> None:
    items = [
        {"id": "fine", "conversations": [{"from": "human", "value": "Hi"}]},
        {"id": "odd", "conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
    ]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(items), encoding="utf-8")

    with pytest.raises(CorpusFormatError) as raised:
        list(convert_sharegpt(path))

    assert "item at index 1 (id 'odd'): turn 1" in str(raised.value)
    assert "unknown \"from\" value 'robot'" in str(raised.value)


def test_sharegpt_jsonl_unknown_from_names_line(tmp_path: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "Hi"}]}
    bad = {"conversations": [{"from": "narrator", "value": "Once upon a time"}]}
    path = write_lines(tmp_path / "chats.jsonl", json.dumps(good), json.dumps(bad))

    with pytest.raises(CorpusFormatError, match=r"chats\.jsonl:2 \(id 'chats-1'\): turn 0 has unknown \"from\""):
        list(convert_sharegpt(path))


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "x"}, '"conversations" must be a list of turns, got null'),
        ({"id": "x", "conversations": [{"from": "human", "value": None}]}, '"value" must be a string'),
        ({"id": "x", "conversations": ["Hi"]}, 'must be an object with "from" and "value"'),
        ({"id": ["x"], "conversations": []}, '"id" must be a non-empty string or an integer'),
        ("just text", 'expected an object with "conversations"'),
    ],
)
def test_sharegpt_invalid_item_raises(tmp_path: Path, item: object, expected: str) -> None:
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([item]), encoding="utf-8")

    with pytest.raises(CorpusFormatError) as raised:
        list(convert_sharegpt(path))

    assert "item at index 0" in str(raised.value)
    assert expected in str(raised.value)


def test_sharegpt_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "chats.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b",,}\n]\n', encoding="utf-8")

    with pytest.raises(CorpusFormatError, match=r"chats\.json:3: invalid JSON"):
        list(convert_sharegpt(path))


def test_sharegpt_duplicate_id_rejected(tmp_path: Path) -> None:
    item = {"id": "same", "conversations": [{"from": "human", "value": "Hi"}]}
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([item, item]), encoding="utf-8")

    with pytest.raises(
        CorpusFormatError, match=r"item at index 1 \(id 'same'\): duplicate id, already used by item at index 0;"
    ):
        list(convert_sharegpt(path))


def test_sharegpt_skips_empty_conversations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    items = [{"id": "empty", "conversations": []}, {"id": "kept", "conversations": [{"from": "gpt", "value": "Hi"}]}]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(items), encoding="utf-8")

    dialogues = list(convert_sharegpt(path))

    assert [dialogue.id for dialogue in dialogues] == ["kept"]
    assert "Skipped 1 ShareGPT items with an empty conversations list" in caplog.text


# DailyDialog


def test_dailydialog_fixture_roles_and_texts() -> None:
    dialogues = list(convert_dailydialog(DAILYDIALOG_FIXTURE))

    assert [dialogue.id for dialogue in dialogues] == ["dailydialog-1", "dailydialog-2", "dailydialog-4"]
    assert dialogues[0].messages == [
        {"role": "user", "content": "Excuse me, is this the bus to the harbour?"},
        {"role": "assistant", "content": "No, you need the number twelve. It's across the street."},
        {"role": "user", "content": "Thanks. How often does it come?"},
        {"role": "assistant", "content": "Every ten minutes, I think."},
    ]
    assert dialogues[1].messages[0] == {
        "role": "user",
        "content": "I can't find my blue umbrella with the wooden handle.",
    }
    assert dialogues[1].messages[2] == {"role": "user", "content": "Maybe. I'll call them before five o'clock."}
    assert dialogues[2].messages[1] == {"role": "assistant", "content": "Around six (maybe later), why?"}
    assert dialogues[2].messages[3] == {"role": "assistant", "content": "Sure, I’m in!"}


@pytest.mark.parametrize(
    ("tokenized", "expected"),
    [
        ("Hello , it ' s me .", "Hello, it's me."),
        ("  We ' re late ; aren ' t we ?  ", "We're late; aren't we?"),
        ("They ' ve gone , haven ' t they !", "They've gone, haven't they!"),
        ("I ’ d say 50 % off", "I’d say 50% off"),
        ("Mr . Smith ' s dog", "Mr. Smith's dog"),
        ("the students ' books", "the students ' books"),
    ],
)
def test_dailydialog_detokenize_cases(tokenized: str, expected: str) -> None:
    assert detokenize_dailydialog(tokenized) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Hello there , no separator .", "no __eou__ found"),
        ("Hi . __eou__ Hello . __eou__ trailing text", "text after the last __eou__: 'trailing text'"),
        ("Hi . __eou__   __eou__ Hello . __eou__", "utterance 1 is empty"),
    ],
)
def test_dailydialog_invalid_line_names_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "dialogues_text.txt", "Hi . __eou__ Hello . __eou__", line)

    with pytest.raises(CorpusFormatError) as raised:
        list(convert_dailydialog(path))

    assert str(raised.value).startswith(f"{path}:2: ")
    assert expected in str(raised.value)


# convert


@pytest.mark.parametrize(
    ("source_format", "fixture", "expected_count"),
    [("sharegpt", SHAREGPT_FIXTURE, 4), ("dailydialog", DAILYDIALOG_FIXTURE, 3)],
)
def test_convert_writes_loadable_corpus(tmp_path: Path, source_format: str, fixture: Path, expected_count: int) -> None:
    output = tmp_path / "corpus.jsonl"

    count = convert(source_format, fixture, output)

    assert count == expected_count
    converter = convert_sharegpt if source_format == "sharegpt" else convert_dailydialog
    assert load_corpus(output) == list(converter(fixture))


def test_convert_unknown_format_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown source format 'csv'; choose one of: dailydialog, sharegpt"):
        convert("csv", SHAREGPT_FIXTURE, tmp_path / "corpus.jsonl")

    assert not (tmp_path / "corpus.jsonl").exists()


def test_convert_failure_writes_nothing(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "dialogues_text.txt", "Hi . __eou__ Hello . __eou__", "no separator here")
    output = tmp_path / "corpus.jsonl"

    with pytest.raises(CorpusFormatError, match=r"dialogues_text\.txt:2: no __eou__ found"):
        convert("dailydialog", source, output)

    assert sorted(item.name for item in tmp_path.iterdir()) == ["dialogues_text.txt"]
