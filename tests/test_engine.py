"""Stop sequences in streamed and finished text."""

from __future__ import annotations

from adapters.engine import _StopTrimmer


def feed_all(trimmer: _StopTrimmer, pieces: list[str]) -> str:
    text, sent = "", ""
    for piece in pieces:
        text += piece
        sent += trimmer.feed(text)
    return sent + trimmer.finish()


def test_text_without_stop_passes_whole() -> None:
    assert feed_all(_StopTrimmer(("END",)), ["Hello ", "world"]) == "Hello world"


def test_text_cut_at_stop() -> None:
    trimmer = _StopTrimmer(("END",))

    assert feed_all(trimmer, ["Hello E", "ND and more"]) == "Hello "
    assert trimmer.stopped is True


def test_earliest_of_several_stops() -> None:
    assert feed_all(_StopTrimmer(("two", "one")), ["zero one two"]) == "zero "


def test_partial_stop_held_back() -> None:
    trimmer = _StopTrimmer(("END",))

    assert trimmer.feed("abcEN") == "abc"
