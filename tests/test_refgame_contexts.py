"""Loading reference game contexts from JSON and CSV, and the errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.refgame.contexts import DEFAULT_CONTEXTS_PATH, ContextsFormatError, load_contexts

KITCHEN = {
    "id": "kitchen",
    "category": "household",
    "items": [
        {"word": "teapot", "forbidden": ["tea", "pot"]},
        {"word": "mug", "forbidden": []},
        {"word": "Saucepan", "forbidden": ["sauce", "pan"]},
        {"word": "jug"},
    ],
}
CSV_HEADER = "context_id,category,word,forbidden\n"


def write_json(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "contexts.json"
    path.write_text(json.dumps(document))
    return path


def test_shipped_contexts_are_valid() -> None:
    contexts = load_contexts(DEFAULT_CONTEXTS_PATH)

    assert len(contexts) >= 40
    assert len({context.category for context in contexts}) >= 6


def test_json_context_loads_items() -> None:
    contexts = load_contexts(DEFAULT_CONTEXTS_PATH)
    kitchen = next(context for context in contexts if context.id == "kitchen-vessels")

    assert kitchen.words == ["teapot", "mug", "saucepan", "jug"]
    assert kitchen.items[0].forbidden == ("tea", "pot")


def test_json_words_are_lowercased(tmp_path: Path) -> None:
    contexts = load_contexts(write_json(tmp_path, {"contexts": [KITCHEN]}))

    assert contexts[0].words[2] == "saucepan"


def test_bare_json_list_accepted(tmp_path: Path) -> None:
    contexts = load_contexts(write_json(tmp_path, [KITCHEN]))

    assert contexts[0].id == "kitchen"


def test_csv_contexts_load(tmp_path: Path) -> None:
    path = tmp_path / "contexts.csv"
    rows = ["kitchen,household,teapot,tea;pot", "kitchen,household,mug,", "kitchen,household,jug,", "kitchen,,pan,"]
    path.write_text(CSV_HEADER + "\n".join(rows) + "\n")

    contexts = load_contexts(path)

    assert contexts[0].words == ["teapot", "mug", "jug", "pan"]
    assert contexts[0].items[0].forbidden == ("tea", "pot")


def test_csv_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "contexts.csv"
    rows = ["kitchen,household,teapot,", "kitchen,household,mug2,", "kitchen,household,jug,", "kitchen,,pan,"]
    path.write_text(CSV_HEADER + "\n".join(rows) + "\n")

    with pytest.raises(ContextsFormatError, match=r"line 3: invalid item word 'mug2'"):
        load_contexts(path)


def test_csv_missing_column_rejected(tmp_path: Path) -> None:
    path = tmp_path / "contexts.csv"
    path.write_text("context_id,word\nkitchen,mug\n")

    with pytest.raises(ContextsFormatError, match="missing CSV columns category, forbidden"):
        load_contexts(path)


def test_wrong_item_count_names_context(tmp_path: Path) -> None:
    short = {**KITCHEN, "items": KITCHEN["items"][:3]}
    path = write_json(tmp_path, {"contexts": [KITCHEN, short]})

    with pytest.raises(ContextsFormatError, match=r"context 2 \(id 'kitchen'\): has 3 items"):
        load_contexts(path)


def test_duplicate_context_id_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"contexts": [KITCHEN, KITCHEN]})

    with pytest.raises(ContextsFormatError, match="id 'kitchen' is used twice"):
        load_contexts(path)


def test_duplicate_item_rejected(tmp_path: Path) -> None:
    items = [*KITCHEN["items"][:3], {"word": "mug"}]
    path = write_json(tmp_path, {"contexts": [{**KITCHEN, "items": items}]})

    with pytest.raises(ContextsFormatError, match="item 'mug' appears more than once"):
        load_contexts(path)


def test_forbidden_must_be_list(tmp_path: Path) -> None:
    items = [{"word": "teapot", "forbidden": "tea"}, *KITCHEN["items"][1:]]
    path = write_json(tmp_path, {"contexts": [{**KITCHEN, "items": items}]})

    with pytest.raises(ContextsFormatError, match="item 1: 'forbidden' must be a list"):
        load_contexts(path)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "contexts.json"
    path.write_text('{"contexts": [\n  {"id": "kitchen",,}\n]}')

    with pytest.raises(ContextsFormatError, match="invalid JSON at line 2"):
        load_contexts(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ContextsFormatError, match="not found"):
        load_contexts(tmp_path / "absent.json")


def test_unknown_suffix_rejected(tmp_path: Path) -> None:
    path = tmp_path / "contexts.yaml"
    path.write_text("contexts: []")

    with pytest.raises(ContextsFormatError, match=r"must end in \.json or \.csv"):
        load_contexts(path)


def test_empty_context_list_rejected(tmp_path: Path) -> None:
    with pytest.raises(ContextsFormatError, match="contains no contexts"):
        load_contexts(write_json(tmp_path, {"contexts": []}))


def test_csv_with_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "contexts.csv"
    rows = ["k,household,teapot,tea;pot", "k,household,mug,", "k,household,saucepan,sauce;pan", "k,household,jug,"]
    path.write_bytes(b"\xef\xbb\xbf" + (CSV_HEADER + "\n".join(rows) + "\n").encode())

    contexts = load_contexts(path)

    assert contexts[0].id == "k"
    assert contexts[0].words == ["teapot", "mug", "saucepan", "jug"]


def test_deeply_nested_json_rejected(tmp_path: Path) -> None:
    path = tmp_path / "contexts.json"
    path.write_text("[" * 100_000 + "]" * 100_000)

    with pytest.raises(ContextsFormatError, match="nested too deeply"):
        load_contexts(path)


def test_folder_as_contexts_file_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "contexts.json"
    folder.mkdir()

    with pytest.raises(ContextsFormatError, match="is a folder"):
        load_contexts(folder)


def test_context_id_with_newline_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{**KITCHEN, "id": "kitchen\n"}])

    with pytest.raises(ContextsFormatError, match="invalid id"):
        load_contexts(path)
