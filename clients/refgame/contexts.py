"""Reference game contexts: four items each, with the words a speaker may not use, read from JSON or CSV.

JSON: ``{"contexts": [{"id": "kitchen", "category": "household", "items": [{"word": "teapot", "forbidden":
["tea", "pot"]}, ...]}]}`` (a bare list of contexts is accepted too). CSV: a header ``context_id,category,word,
forbidden`` and one row per item, four rows per context, forbidden words separated by ``;``.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ITEMS_PER_CONTEXT = 4
CSV_COLUMNS = ("context_id", "category", "word", "forbidden")
DEFAULT_CONTEXTS_PATH = Path(__file__).resolve().parent.parent / "data" / "refgame_contexts.json"

# Item words and forbidden words: letters with single inner spaces, hyphens or apostrophes ("ice cream", "yo-yo").
_WORD_PATTERN = re.compile(r"^[A-Za-z]+(?:[ '-][A-Za-z]+)*$")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ContextsFormatError(ValueError):
    """A contexts file that cannot be read; the message names the file, the entry or line, and the problem."""


@dataclass(frozen=True)
class Item:
    """One object of a context and the extra words (parts, irregular forms) that refer to it too directly."""

    word: str
    forbidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    """The items that speaker and listener both see during one game."""

    id: str
    category: str
    items: tuple[Item, ...]

    @property
    def words(self) -> list[str]:
        return [item.word for item in self.items]


def load_contexts(path: Path) -> list[Context]:
    """Reads and validates a contexts file; the format follows the suffix (.json or .csv)."""
    if path.is_dir():
        raise ContextsFormatError(f"contexts file {path} is a folder; pass a .json or .csv file")
    if not path.is_file():
        raise ContextsFormatError(f"contexts file not found: {path}")
    try:
        # utf-8-sig drops the byte order mark that spreadsheet programs write at the start of a UTF-8 CSV file.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ContextsFormatError(f"contexts file {path} cannot be read: {error}") from error

    suffix = path.suffix.lower()
    if suffix == ".json":
        contexts = _parse_json(text, path)
    elif suffix == ".csv":
        contexts = _parse_csv(text, path)
    else:
        raise ContextsFormatError(f"contexts file {path} must end in .json or .csv, not {suffix or '(no suffix)'!r}")
    if not contexts:
        raise ContextsFormatError(f"contexts file {path} contains no contexts")
    return contexts


def _parse_json(text: str, path: Path) -> list[Context]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ContextsFormatError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    except RecursionError as error:
        raise ContextsFormatError(f"{path}: invalid JSON: arrays or objects are nested too deeply") from error
    entries = document.get("contexts") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ContextsFormatError(f"{path}: expected a list of contexts or an object with a 'contexts' list")

    contexts: list[Context] = []
    for index, entry in enumerate(entries):
        where = f"{path}: context {index + 1}"
        if not isinstance(entry, dict):
            raise ContextsFormatError(f"{where}: expected an object with id, category and items")
        if isinstance(entry.get("id"), str):
            where += f" (id {entry['id']!r})"
        items = entry.get("items")
        if not isinstance(items, list):
            raise ContextsFormatError(f"{where}: 'items' must be a list of {ITEMS_PER_CONTEXT} items")
        parsed = tuple(_json_item(item, f"{where}, item {number + 1}") for number, item in enumerate(items))
        contexts.append(_build_context(entry.get("id"), entry.get("category", ""), parsed, where))
    _check_unique_ids(contexts, path)
    return contexts


def _json_item(item: Any, where: str) -> Item:
    if not isinstance(item, dict):
        raise ContextsFormatError(f"{where}: expected an object with 'word' and 'forbidden'")
    forbidden = item.get("forbidden", [])
    if not isinstance(forbidden, list) or not all(isinstance(word, str) for word in forbidden):
        raise ContextsFormatError(f"{where}: 'forbidden' must be a list of words")
    return _build_item(item.get("word"), forbidden, where)


def _parse_csv(text: str, path: Path) -> list[Context]:
    reader = csv.DictReader(text.splitlines())
    missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ContextsFormatError(f"{path}: line 1: missing CSV columns {', '.join(missing)}")

    rows: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for row in reader:
        line = reader.line_num
        context_id = (row.get("context_id") or "").strip()
        if not context_id:
            raise ContextsFormatError(f"{path}: line {line}: empty context_id")
        rows.setdefault(context_id, []).append((line, row))

    contexts = []
    for context_id, context_rows in rows.items():
        items = []
        for line, row in context_rows:
            forbidden = [word.strip() for word in (row.get("forbidden") or "").split(";") if word.strip()]
            items.append(_build_item((row.get("word") or "").strip(), forbidden, f"{path}: line {line}"))
        first_line = context_rows[0][0]
        where = f"{path}: context {context_id!r} (line {first_line})"
        category = (context_rows[0][1].get("category") or "").strip()
        contexts.append(_build_context(context_id, category, tuple(items), where))
    return contexts


def _build_item(word: Any, forbidden: list[str], where: str) -> Item:
    if not isinstance(word, str) or not _WORD_PATTERN.fullmatch(word.strip()):
        raise ContextsFormatError(f"{where}: invalid item word {word!r}: use letters, with single spaces or hyphens")
    for extra in forbidden:
        if not _WORD_PATTERN.fullmatch(extra.strip()):
            raise ContextsFormatError(f"{where}: invalid forbidden word {extra!r} for item {word!r}")
    return Item(word=word.strip().lower(), forbidden=tuple(extra.strip().lower() for extra in forbidden))


def _build_context(context_id: Any, category: Any, items: tuple[Item, ...], where: str) -> Context:
    if not isinstance(context_id, str) or not _ID_PATTERN.fullmatch(context_id):
        raise ContextsFormatError(f"{where}: invalid id {context_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(category, str):
        raise ContextsFormatError(f"{where}: 'category' must be a string")
    if len(items) != ITEMS_PER_CONTEXT:
        raise ContextsFormatError(f"{where}: has {len(items)} items; each context needs exactly {ITEMS_PER_CONTEXT}")
    words = [item.word for item in items]
    duplicates = sorted({word for word in words if words.count(word) > 1})
    if duplicates:
        raise ContextsFormatError(f"{where}: item {duplicates[0]!r} appears more than once")
    return Context(id=context_id, category=category, items=items)


def _check_unique_ids(contexts: list[Context], path: Path) -> None:
    seen: set[str] = set()
    for index, context in enumerate(contexts):
        if context.id in seen:
            raise ContextsFormatError(f"{path}: context {index + 1}: id {context.id!r} is used twice")
        seen.add(context.id)
