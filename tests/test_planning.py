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


def test_planning_token_id_never_reaches_text_or_logprobs(tiny_model_path: str) -> None:
    import threading

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.base_model import add_planning_token
    from adapters.decoding import TokenLogprob
    from adapters.engine import TextDelta, _DeltaCollector, _StopTrimmer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    planning_id = add_planning_token(AutoModelForCausalLM.from_pretrained(tiny_model_path), tokenizer)
    deltas: list[TextDelta] = []
    collector = _DeltaCollector(tokenizer, _StopTrimmer(()), deltas.append, threading.Event(), planning_id)
    tokens = tokenizer("pass me[remention] the mug", add_special_tokens=False)["input_ids"]
    for token in tokens:
        collector.on_token(token, TokenLogprob(token_id=token, logprob=-1.0, top=((planning_id, -0.5), (token, -1.0))))
    collector.flush()
    sent_logprobs = [entry for delta in deltas for entry in delta.logprobs]

    assert planning_id in tokens
    assert "".join(delta.text for delta in deltas) == "pass me the mug"
    assert [entry.token_id for entry in sent_logprobs] == [token for token in tokens if token != planning_id]
    assert all(alternative != planning_id for entry in sent_logprobs for alternative, _ in entry.top)
    assert collector.planning_tokens == 1


def test_insert_marker_before_mention_and_filter_restores() -> None:
    from adapters.planning import insert_marker

    text = "Could you pass me the chipped mug?"
    marked = insert_marker(text, text.index("the chipped"))

    assert marked == "Could you pass me[remention] the chipped mug?"
    assert PlanningTokenFilter().strip(marked) == text
    assert insert_marker("The mug is here", 0) == "[remention]The mug is here"
