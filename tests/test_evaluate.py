"""The held-out split and the gate that decides whether a new adapter becomes active."""

from __future__ import annotations

from trainer.evaluate import fit_prompts, gate, split_pairs
from trainer.mining import PreferencePair


def pair(index: int) -> PreferencePair:
    return PreferencePair(
        prompt=[{"role": "user", "content": "hi"}],
        chosen=f"the mug {index}",
        rejected=f"the small red mug {index}",
        role="user",
        first_mention="the small red mug",
        remention="the mug",
    )


def scores(accuracy: float) -> dict:
    return {"accuracy": accuracy, "mean_margin": 0.0, "pairs": 5}


def test_split_is_deterministic() -> None:
    pairs = [pair(index) for index in range(50)]

    assert split_pairs(pairs) == split_pairs(list(pairs))


def test_split_holds_out_some_pairs() -> None:
    train, held_out = split_pairs([pair(index) for index in range(50)])

    assert 0 < len(held_out) < len(train)
    assert not set(map(id, train)) & set(map(id, held_out))


def test_small_set_still_holds_one_out() -> None:
    assert len(split_pairs([pair(1), pair(2)])[1]) >= 1


def test_gate_passes_when_not_worse() -> None:
    passed, reason = gate({"base": scores(0.5), "new": scores(0.5)})

    assert passed is True
    assert "base" in reason


def test_gate_compares_with_active_version() -> None:
    passed, reason = gate({"base": scores(0.2), "active": scores(0.8), "new": scores(0.6)})

    assert passed is False
    assert "active" in reason


class WordTokenizer:
    """Counts one token per word, enough to check prompt budgets."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_long_prompts_cut_to_budget() -> None:
    long = PreferencePair(
        prompt=[{"role": "user", "content": f"message {index} " + "word " * 20} for index in range(50)]
        + [{"role": "user", "content": "I bought the small red mug today."}],
        chosen="the mug",
        rejected="the small red mug",
        role="user",
        first_mention="the small red mug",
        remention="the mug",
    )
    fitted = fit_prompts([long], WordTokenizer(), max_prompt_tokens=64)
    words = sum(len(message["content"].split()) for message in fitted[0].prompt)

    assert words <= 64
    assert fitted[0].prompt[-1]["content"] == "I bought the small red mug today."
