"""The dialogue corpus that post-trains the base model: its format, loader, writer and converters.

A corpus is a JSON Lines file with one dialogue per line::

    {"id": "kitchen-1", "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Roles are "user", "assistant" and "system". In human-human dialogue the first speaker is "user" and the
second is "assistant", alternating. Other top-level keys (such as "source" or "metadata") and other keys of a
message are ignored. Blank lines are skipped. The re-mention miner reads ``Dialogue.messages`` as a transcript.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

ROLES = frozenset({"user", "assistant", "system"})

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
"""ShareGPT "from" values and the corpus role each one becomes."""

DAILYDIALOG_END_OF_UTTERANCE = "__eou__"

# DailyDialog is tokenized: "Hello , it ' s me ." The patterns put punctuation and contractions back.
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,!?;:%)])")
_SPACE_AFTER_OPENING_BRACKET = re.compile(r"([(])\s+")
_SPLIT_CONTRACTION = re.compile(r"(\w) (['’]) (s|t|m|d|re|ve|ll|clock)\b", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class CorpusFormatError(ValueError):
    """A corpus or source dialogue file that does not follow its format."""


@dataclass(frozen=True)
class Dialogue:
    """One conversation: a unique ``id`` and its messages, each with a ``role`` and a ``content`` string."""

    id: str
    messages: list[dict[str, str]]


# Corpus files


def load_corpus(path: str | os.PathLike[str]) -> list[Dialogue]:
    """Read a corpus file and check every line, raising CorpusFormatError at the first invalid one."""
    dialogues: list[Dialogue] = []
    first_lines: dict[str, int] = {}
    for line_number, line in _read_lines(path):
        location = f"{path}:{line_number}"
        record = _parse_json(line, location)
        dialogue = _dialogue_from_record(record, location)

        if dialogue.id in first_lines:
            raise CorpusFormatError(
                f"{location}: duplicate id {dialogue.id!r}, already used on line {first_lines[dialogue.id]}; "
                "give each dialogue a unique id"
            )
        first_lines[dialogue.id] = line_number
        dialogues.append(dialogue)
    return dialogues


def write_corpus(dialogues: Iterable[Dialogue], path: str | os.PathLike[str]) -> int:
    """Write dialogues as a corpus file and return how many were written.

    Each dialogue is checked as ``load_corpus`` would check it, and a CorpusFormatError naming the
    dialogue leaves any existing file at ``path`` unchanged, because the lines go to a temporary file
    that replaces ``path`` only at the end.
    """
    target = Path(path)
    temporary = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    try:
        with temporary:
            count = _write_dialogues(dialogues, temporary)
        os.replace(temporary.name, target)
    finally:
        # Only a failed write leaves the temporary file behind.
        if os.path.exists(temporary.name):
            os.unlink(temporary.name)
    return count


def _write_dialogues(dialogues: Iterable[Dialogue], file: IO[str]) -> int:
    seen_ids: set[str] = set()
    count = 0
    for dialogue in dialogues:
        location = f"dialogue {count} (id {dialogue.id!r})"
        checked = _dialogue_from_record({"id": dialogue.id, "messages": dialogue.messages}, location)
        if checked.id in seen_ids:
            raise CorpusFormatError(f"{location}: duplicate id; give each dialogue a unique id")
        seen_ids.add(checked.id)

        record = {"id": checked.id, "messages": checked.messages}
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _read_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield each non-blank line of a UTF-8 file with its 1-based line number."""
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusFormatError(
                    f"{path}:{line_number}: invalid UTF-8 at byte {error.start} of the line; save the file as UTF-8"
                ) from error
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield line_number, line


def _parse_json(text: str, location: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorpusFormatError(f"{location}: invalid JSON: {error.msg} at column {error.colno}") from error


def _dialogue_from_record(record: Any, location: str) -> Dialogue:
    if not isinstance(record, dict):
        raise CorpusFormatError(f'{location}: expected a JSON object with "id" and "messages", got {_kind(record)}')

    if "id" not in record:
        raise CorpusFormatError(f'{location}: missing "id"; every dialogue needs a unique string id')
    dialogue_id = record["id"]
    if not isinstance(dialogue_id, str) or not dialogue_id:
        raise CorpusFormatError(f'{location}: "id" must be a non-empty string, got {dialogue_id!r}')

    if "messages" not in record:
        raise CorpusFormatError(f'{location}: missing "messages" in dialogue {dialogue_id!r}')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise CorpusFormatError(
            f'{location}: "messages" must be a non-empty list of messages, got {_kind(messages)} '
            f"in dialogue {dialogue_id!r}"
        )

    checked = [_checked_message(message, f"{location}: message {index}") for index, message in enumerate(messages)]
    return Dialogue(id=dialogue_id, messages=checked)


def _checked_message(message: Any, location: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise CorpusFormatError(f'{location} must be an object with "role" and "content", got {_kind(message)}')

    role = message.get("role")
    if role not in ROLES:
        expected = ", ".join(sorted(ROLES))
        if "role" not in message:
            raise CorpusFormatError(f'{location} is missing "role"; expected one of {expected}')
        raise CorpusFormatError(f"{location} has unknown role {role!r}; expected one of {expected}")

    content = message.get("content")
    if not isinstance(content, str):
        raise CorpusFormatError(f'{location} "content" must be a string, got {_kind(content)}')
    return {"role": role, "content": content}


def _kind(value: Any) -> str:
    """Name a JSON value's type for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


# ShareGPT


def convert_sharegpt(path: str | os.PathLike[str]) -> Iterator[Dialogue]:
    """Yield the dialogues of a ShareGPT file: a JSON list of items, or JSON Lines with one item a line.

    Each item has "conversations", a list of ``{"from": ..., "value": ...}`` turns, and an optional "id".
    An item without an id gets ``<file stem>-<index>``, where index is the item's 0-based position. Items
    whose conversations list is empty are skipped, and one warning gives their count.
    """
    stem = Path(path).stem
    seen_ids: dict[str, str] = {}
    skipped = 0
    for index, (location, position, item) in enumerate(_sharegpt_items(path)):
        dialogue = _sharegpt_dialogue(item, location, default_id=f"{stem}-{index}")
        if dialogue is None:
            skipped += 1
            continue

        if dialogue.id in seen_ids:
            raise CorpusFormatError(
                f"{location} (id {dialogue.id!r}): duplicate id, already used by {seen_ids[dialogue.id]}; "
                "give each conversation a unique id"
            )
        seen_ids[dialogue.id] = position
        yield dialogue

    if skipped:
        logger.warning("Skipped %d ShareGPT items with an empty conversations list in %s", skipped, path)


def _sharegpt_items(path: str | os.PathLike[str]) -> Iterator[tuple[str, str, Any]]:
    """Yield each item of a JSON list or of JSON Lines, after its location and its position in the file.

    The location (``<path>:<line>`` or ``<path>: item at index <index>``) starts an error message, and the
    position (``line <line>`` or ``item at index <index>``) names an earlier item in one.
    """
    if not _starts_with_bracket(path):
        for line_number, line in _read_lines(path):
            location = f"{path}:{line_number}"
            yield location, f"line {line_number}", _parse_json(line, location)
        return

    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line_number = raw[: error.start].count(b"\n") + 1
        raise CorpusFormatError(f"{path}:{line_number}: invalid UTF-8; save the file as UTF-8") from error

    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise CorpusFormatError(f"{path}:{error.lineno}: invalid JSON: {error.msg} at column {error.colno}") from error
    for index, item in enumerate(items):
        yield f"{path}: item at index {index}", f"item at index {index}", item


def _starts_with_bracket(path: str | os.PathLike[str]) -> bool:
    """Return whether the first character after any byte order mark and whitespace is "[", which starts a JSON list."""
    with open(path, "rb") as file:
        start = file.read(3).removeprefix(b"\xef\xbb\xbf")
        while start:
            stripped = start.lstrip()
            if stripped:
                return stripped.startswith(b"[")
            start = file.read(4096)
    return False


def _sharegpt_dialogue(item: Any, location: str, *, default_id: str) -> Dialogue | None:
    if not isinstance(item, dict):
        raise CorpusFormatError(f'{location}: expected an object with "conversations", got {_kind(item)}')

    dialogue_id = item.get("id")
    if dialogue_id is None:
        dialogue_id = default_id
    if isinstance(dialogue_id, int) and not isinstance(dialogue_id, bool):
        dialogue_id = str(dialogue_id)
    if not isinstance(dialogue_id, str) or not dialogue_id:
        raise CorpusFormatError(f'{location}: "id" must be a non-empty string or an integer, got {dialogue_id!r}')
    location = f"{location} (id {dialogue_id!r})"

    conversations = item.get("conversations")
    if not isinstance(conversations, list):
        raise CorpusFormatError(f'{location}: "conversations" must be a list of turns, got {_kind(conversations)}')
    if not conversations:
        return None

    messages = [_sharegpt_message(turn, f"{location}: turn {index}") for index, turn in enumerate(conversations)]
    return Dialogue(id=dialogue_id, messages=messages)


def _sharegpt_message(turn: Any, location: str) -> dict[str, str]:
    if not isinstance(turn, Mapping):
        raise CorpusFormatError(f'{location} must be an object with "from" and "value", got {_kind(turn)}')

    speaker = turn.get("from")
    if speaker not in SHAREGPT_ROLES:
        expected = ", ".join(sorted(SHAREGPT_ROLES))
        raise CorpusFormatError(f'{location} has unknown "from" value {speaker!r}; expected one of {expected}')

    value = turn.get("value")
    if not isinstance(value, str):
        raise CorpusFormatError(f'{location} "value" must be a string, got {_kind(value)}')
    return {"role": SHAREGPT_ROLES[speaker], "content": value}


# DailyDialog


def convert_dailydialog(path: str | os.PathLike[str]) -> Iterator[Dialogue]:
    """Yield the dialogues of a DailyDialog text file, such as ``dialogues_text.txt``.

    Each line is one dialogue whose utterances each end with ``__eou__``. The speakers alternate, so
    utterances become user and assistant messages in turn. Each dialogue's id is
    ``dailydialog-<line number>``.
    """
    for line_number, line in _read_lines(path):
        location = f"{path}:{line_number}"
        if DAILYDIALOG_END_OF_UTTERANCE not in line:
            raise CorpusFormatError(
                f"{location}: no {DAILYDIALOG_END_OF_UTTERANCE} found; "
                f"each utterance must end with {DAILYDIALOG_END_OF_UTTERANCE}"
            )

        utterances = line.split(DAILYDIALOG_END_OF_UTTERANCE)
        if utterances[-1].strip():
            raise CorpusFormatError(
                f"{location}: text after the last {DAILYDIALOG_END_OF_UTTERANCE}: {utterances[-1].strip()!r}"
            )

        messages: list[dict[str, str]] = []
        for index, utterance in enumerate(utterances[:-1]):
            content = detokenize_dailydialog(utterance)
            if not content:
                raise CorpusFormatError(f"{location}: utterance {index} is empty")
            messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": content})
        yield Dialogue(id=f"dailydialog-{line_number}", messages=messages)


def detokenize_dailydialog(utterance: str) -> str:
    """Undo DailyDialog's tokenization: "it ' s here , right ?" becomes "it's here, right?"."""
    text = _WHITESPACE.sub(" ", utterance).strip()
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = _SPACE_AFTER_OPENING_BRACKET.sub(r"\1", text)
    # NOTE: quoted speech ("he said " hi " to me") keeps its spaces, because an opening and a closing
    # straight quote look the same.
    return _SPLIT_CONTRACTION.sub(r"\1\2\3", text)


# Conversion


CONVERTERS: dict[str, Callable[[str | os.PathLike[str]], Iterator[Dialogue]]] = {
    "sharegpt": convert_sharegpt,
    "dailydialog": convert_dailydialog,
}
"""Source format names and the function that reads each format."""


def convert(source_format: str, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> int:
    """Convert a file of a public dialogue format into a corpus file and return how many dialogues it wrote."""
    converter = CONVERTERS.get(source_format)
    if converter is None:
        choices = ", ".join(sorted(CONVERTERS))
        raise ValueError(f"unknown source format {source_format!r}; choose one of: {choices}")

    count = write_corpus(converter(input_path), output_path)
    logger.info("Converted %d %s dialogues from %s to %s", count, source_format, input_path, output_path)
    return count
