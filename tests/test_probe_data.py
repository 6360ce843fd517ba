"""Loading and validating re-mention probe files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clients.probe.data import DEFAULT_DIALOGUES_PATH, ProbeDataError, load_items


def valid_record(**changes: Any) -> dict[str, Any]:
    record = {
        "id": "mug-1",
        "kind": "remention",
        "domain": "kitchen",
        "messages": [
            {"role": "user", "content": "I dropped the small red ceramic mug with the chipped handle."},
            {"role": "assistant", "content": "Is it still usable?"},
            {"role": "user", "content": "The crack is tiny. Can I still drink from it?"},
        ],
        "prefix": "I would not drink hot tea from",
        "first_mention": "the small red ceramic mug with the chipped handle",
        "head": "mug",
        "short_forms": ["the chipped mug", "the mug"],
    }
    record.update(changes)
    return record


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_error(tmp_path: Path, *records: dict[str, Any]) -> ProbeDataError:
    path = write_lines(tmp_path / "items.jsonl", *(json.dumps(record) for record in records))
    with pytest.raises(ProbeDataError) as caught:
        load_items(path)
    return caught.value


def test_shipped_file_has_enough_items() -> None:
    items = load_items(DEFAULT_DIALOGUES_PATH)

    rementions = [item for item in items if item.kind == "remention"]
    firsts = [item for item in items if item.kind == "first_mention"]
    assert len(rementions) >= 30
    assert len(firsts) >= 10
    assert len({item.domain for item in items}) >= 5


def test_valid_record_loads(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "items.jsonl", json.dumps(valid_record()), "")

    (item,) = load_items(path)
    assert item.head == "mug"
    assert item.short_forms == ["the chipped mug", "the mug"]


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "items.jsonl", json.dumps(valid_record()), "{not json")

    with pytest.raises(ProbeDataError) as caught:
        load_items(path)
    assert caught.value.line == 2
    assert "not valid JSON" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "later"}, "kind"),
        ({"prefix": "Drink from "}, "prefix"),
        ({"head": "cup"}, "head"),
        ({"head": "red mug"}, "head"),
        ({"short_forms": []}, "short_forms"),
        ({"short_forms": ["the small red ceramic mug with the chipped handle"]}, "short_forms[0]"),
        ({"first_mention": "the big blue mug on the top shelf"}, "first_mention"),
        ({"kind": "first_mention"}, "first_mention"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "the mug"}, {"role": "assistant", "content": "ok"}]}, "messages"),
        ({"id": ""}, "id"),
        ({"domain": 3}, "domain"),
    ],
)
def test_invalid_field_named(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    error = load_error(tmp_path, valid_record(**changes))

    assert error.field == field
    assert error.line == 1


def test_missing_field_named(tmp_path: Path) -> None:
    record = valid_record()
    del record["short_forms"]

    error = load_error(tmp_path, record)
    assert error.field == "short_forms"
    assert "missing" in str(error)


def test_duplicate_id_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, valid_record(), valid_record())

    assert error.field == "id"
    assert error.line == 2


def test_empty_file_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "items.jsonl", "")

    with pytest.raises(ProbeDataError, match="no items"):
        load_items(path)


def test_deeply_nested_line_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "items.jsonl", json.dumps(valid_record()), "[" * 100_000 + "]" * 100_000)

    with pytest.raises(ProbeDataError, match="nested too deeply") as caught:
        load_items(path)
    assert caught.value.line == 2


def test_folder_as_probe_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ProbeDataError, match="is a folder"):
        load_items(tmp_path)


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(json.dumps(valid_record()).encode() + b"\n\xff\xfe{bad}\n")

    with pytest.raises(ProbeDataError, match="not valid UTF-8") as caught:
        load_items(path)
    assert caught.value.line == 2
    assert str(path) in str(caught.value)


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(valid_record()).encode() + b"\n")

    (item,) = load_items(path)
    assert item.id == "mug-1"
