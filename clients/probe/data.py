"""Probe items: loading and validating the JSON Lines file of dialogues that end right before a mention.

Each line is one JSON object (see docs/evaluation.md, "Re-mention probe"):

- ``id``: unique string.
- ``kind``: ``"remention"`` (the thing was described at length earlier in ``messages``) or ``"first_mention"``
  (the assistant is about to introduce it for the first time).
- ``messages``: the conversation so far, a list of ``{"role", "content"}`` objects with role ``system``, ``user``
  or ``assistant``, ending with a ``user`` message.
- ``prefix``: the start of the assistant's reply, ending right before the mention, without trailing whitespace.
- ``first_mention``: the long first mention, as written in ``messages`` for a re-mention item, or the full
  description expected at a first mention.
- ``head``: the head noun of the first mention, one word of ``first_mention``.
- ``short_forms``: accepted shorter references, each with fewer words than ``first_mention``.
- ``domain``: optional free text, used only to group results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.probe.text import words

DEFAULT_DIALOGUES_PATH = Path(__file__).resolve().parent.parent / "data" / "remention_probe.jsonl"
KINDS = ("remention", "first_mention")
ROLES = ("system", "user", "assistant")
REQUIRED_FIELDS = ("id", "kind", "messages", "prefix", "first_mention", "head", "short_forms")


class ProbeDataError(ValueError):
    """An invalid line of a probe file. The message names the file, the line and the field."""

    def __init__(self, path: Path, line: int, field: str | None, problem: str) -> None:
        where = f"{path}:{line}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.field = field


@dataclass(frozen=True)
class ProbeItem:
    """One dialogue to complete and the thing whose mention is scored."""

    id: str
    kind: str
    messages: list[dict[str, str]]
    prefix: str
    first_mention: str
    head: str
    short_forms: list[str]
    domain: str = ""


def load_items(path: Path = DEFAULT_DIALOGUES_PATH) -> list[ProbeItem]:
    """Reads and validates a probe file.

    Raises ProbeDataError at the first invalid line or when the path cannot be read as a file, and
    FileNotFoundError when the file does not exist.
    """
    if path.is_dir():
        raise ProbeDataError(path, 0, None, "is a folder; pass a JSON Lines file")
    items: list[ProbeItem] = []
    seen: set[str] = set()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ProbeDataError(path, 0, None, f"cannot be read: {error.strerror or error}") from error
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode_line(path, number, raw)
            if not line.strip():
                continue
            item = parse_item(path, number, line)
            if item.id in seen:
                raise ProbeDataError(path, number, "id", f"duplicate id {item.id!r}; ids must be unique")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise ProbeDataError(path, 0, None, "the file contains no items")
    return items


def _decode_line(path: Path, number: int, raw: bytes) -> str:
    # utf-8-sig drops a byte order mark at the start of the file.
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        problem = f"not valid UTF-8 (byte {error.start + 1} of the line); save the file as UTF-8"
        raise ProbeDataError(path, number, None, problem) from error


def parse_item(path: Path, line_number: int, line: str) -> ProbeItem:
    """Parses and checks one line of a probe file."""

    def fail(field: str | None, problem: str) -> ProbeDataError:
        return ProbeDataError(path, line_number, field, problem)

    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise fail(None, f"not valid JSON ({error.msg} at column {error.colno})") from error
    except RecursionError as error:
        raise fail(None, "not valid JSON (arrays or objects are nested too deeply)") from error
    if not isinstance(record, dict):
        raise fail(None, f"expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise fail(name, "missing")
    for name in ("id", "kind", "prefix", "first_mention", "head"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise fail(name, f"must be a non-empty string, got {record[name]!r}")

    if record["kind"] not in KINDS:
        raise fail("kind", f"must be one of {', '.join(KINDS)}, got {record['kind']!r}")
    messages = _messages(record["messages"], fail)
    _check_prefix(record["prefix"], fail)
    head = _head(record["head"], record["first_mention"], fail)
    short_forms = _short_forms(record["short_forms"], record["first_mention"], fail)
    _check_first_mention(record["kind"], record["first_mention"], messages, fail)
    domain = record.get("domain", "")
    if not isinstance(domain, str):
        raise fail("domain", f"must be a string, got {domain!r}")

    return ProbeItem(
        id=record["id"],
        kind=record["kind"],
        messages=messages,
        prefix=record["prefix"],
        first_mention=record["first_mention"],
        head=head,
        short_forms=short_forms,
        domain=domain,
    )


def _messages(value: Any, fail: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise fail("messages", "must be a non-empty list of {role, content} objects")
    messages = []
    for index, message in enumerate(value):
        field = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise fail(field, f"must be an object with exactly 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise fail(f"{field}.role", f"must be one of {', '.join(ROLES)}, got {message['role']!r}")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise fail(f"{field}.content", "must be a non-empty string")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise fail("messages", f"the last message must be a user message, got {messages[-1]['role']!r}")
    return messages


def _check_prefix(prefix: str, fail: Any) -> None:
    # Trailing whitespace would end the prompt with a lone space token, which small models continue badly.
    if prefix != prefix.rstrip():
        raise fail("prefix", "must not end with whitespace; the completion supplies the space before the mention")


def _head(head: str, first_mention: str, fail: Any) -> str:
    head_words = words(head)
    if len(head_words) != 1:
        raise fail("head", f"must be one word, got {head!r}")
    if head_words[0] not in words(first_mention):
        raise fail("head", f"{head!r} is not a word of first_mention {first_mention!r}")
    return head_words[0]


def _short_forms(value: Any, first_mention: str, fail: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise fail("short_forms", "must be a non-empty list of strings")
    limit = len(words(first_mention))
    for index, form in enumerate(value):
        field = f"short_forms[{index}]"
        if not isinstance(form, str) or not words(form):
            raise fail(field, f"must be a string with at least one word, got {form!r}")
        if len(words(form)) >= limit:
            raise fail(field, f"{form!r} must have fewer words than first_mention ({limit})")
    return list(value)


def _check_first_mention(kind: str, first_mention: str, messages: list[dict[str, str]], fail: Any) -> None:
    conversation = " ".join(message["content"] for message in messages).casefold()
    present = first_mention.casefold() in conversation
    if kind == "remention" and not present:
        raise fail("first_mention", "a remention item needs first_mention written verbatim in one of its messages")
    if kind == "first_mention" and present:
        raise fail("first_mention", "a first_mention item must not contain first_mention in its messages yet")
