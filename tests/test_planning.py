"""The planning token never reaches a client, whole or split over streamed pieces."""

from __future__ import annotations

import pytest

from adapters.planning import PLANNING_TOKEN, PlanningTokenFilter

TEXT = f"Put {PLANNING_TOKEN} the mug on the shelf, then {PLANNING_TOKEN}the kettle."
EXPECTED = "Put the mug on the shelf, then the kettle."


def stream_through(pieces: list[str]) -> tuple[list[str], PlanningTokenFilter]:
    planning = PlanningTokenFilter()
    sent = [planning.feed(piece) for piece in pieces]
    sent.append(planning.finish())
    return sent, planning


def test_whole_text_stripped_and_counted() -> None:
    planning = PlanningTokenFilter()

    assert planning.strip(TEXT) == EXPECTED
    assert planning.count == 2


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_split_marker_never_sent(size: int) -> None:
    pieces = [TEXT[start : start + size] for start in range(0, len(TEXT), size)]
    sent, planning = stream_through(pieces)

    assert "".join(sent) == EXPECTED
    assert all("[" not in piece and "]" not in piece for piece in sent)
    assert planning.count == 2


def test_unfinished_prefix_is_plain_text() -> None:
    sent, planning = stream_through(["the list [rem", "ote] item"])

    assert "".join(sent) == "the list [remote] item"
    assert planning.count == 0


def test_engine_collector_never_sends_marker(tiny_model_path: str) -> None:
    import threading

    from transformers import AutoTokenizer

    from adapters.engine import TextDelta, _DeltaCollector, _StopTrimmer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    deltas: list[TextDelta] = []
    collector = _DeltaCollector(tokenizer, _StopTrimmer(()), deltas.append, threading.Event())
    for token in tokenizer(TEXT, add_special_tokens=False)["input_ids"]:
        collector.on_token(token, None)
    collector.flush()
    sent = [delta.text for delta in deltas]

    assert "".join(sent) == EXPECTED
    assert all("[" not in piece and "]" not in piece for piece in sent)
    assert collector.planning_tokens == 2
