"""Held-out evaluation of an adapter on preference pairs, and the gate that decides whether it becomes active.

Preference accuracy is the share of held-out pairs whose chosen completion gets a higher log-likelihood than
the rejected one. The margin is the mean of that log-likelihood difference. The planning-token rates are the
shares of places where the planning token is the most likely next token: right before a re-mention (wanted),
right before a first mention (unwanted) and anywhere else in the chosen line (unwanted). All are measured for the
base model, the convention adapter, the currently active adapter (those that exist) and the new adapter, on the
same pairs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from peft import PeftModel

from adapters.base_model import load_model_and_tokenizer
from adapters.planning import PLANNING_TOKEN
from trainer.mining import PreferencePair

logger = logging.getLogger(__name__)

HELD_OUT_SHARE = 0.2
# A new version that emits the planning token in more than this share of places that are not re-mentions,
# beyond what the reference version does, is not activated: it would fill replies with markers.
MAX_EXTRA_PLANNING_ELSEWHERE = 0.05


@dataclass(frozen=True)
class PreferenceScores:
    """Preference accuracy, mean margin and planning-token rates of one model on held-out pairs."""

    accuracy: float
    mean_margin: float
    pairs: int
    planning_at_rementions: float = 0.0
    planning_at_first_mentions: float = 0.0
    planning_elsewhere: float = 0.0


def split_pairs(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Splits pairs into training and held-out sets by a hash of their text, so a pair stays on one side."""
    train, held_out = [], []
    for pair in pairs:
        digest = hashlib.sha256(f"{pair.chosen}\n{pair.rejected}".encode()).digest()
        (held_out if digest[0] < 256 * HELD_OUT_SHARE else train).append(pair)
    if not held_out and len(train) > 1:
        held_out.append(train.pop())
    return train, held_out


def _prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


@torch.inference_mode()
def completion_logprob(model: Any, tokenizer: Any, prompt: list[dict[str, str]], completion: str) -> float:
    """Returns the summed log-probability of ``completion`` as the assistant's reply after ``prompt``."""
    prompt_ids = _prompt_ids(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt_ids + completion_ids])
    logprobs = torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].float(), dim=-1)
    targets = input_ids[0, 1:]
    picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
    return float(picked[len(prompt_ids) - 1 :].sum())


@torch.inference_mode()
def planning_predictions(
    model: Any, tokenizer: Any, pair: PreferencePair, planning_token_id: int
) -> tuple[bool, float]:
    """Returns whether the planning token is the most likely token right before the pair's mention, and the
    share of the other places in the chosen line where it is."""
    prompt_ids = _prompt_ids(tokenizer, pair.prompt)
    before = tokenizer(pair.chosen[: pair.mention_start].rstrip(" "), add_special_tokens=False)["input_ids"]
    at_mention = model(input_ids=torch.tensor([prompt_ids + before])).logits[0, -1].argmax()
    chosen = tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]
    predicted = model(input_ids=torch.tensor([prompt_ids + chosen])).logits[0, len(prompt_ids) - 1 : -1].argmax(-1)
    others = [index for index in range(len(chosen)) if index != len(before)]
    elsewhere = sum(int(predicted[index]) == planning_token_id for index in others) / max(len(others), 1)
    return int(at_mention) == planning_token_id, elsewhere


def score(
    model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], planning_token_id: int | None = None
) -> PreferenceScores:
    from trainer.train import marked_texts

    margins = []
    for pair in pairs:
        chosen, rejected = marked_texts(pair)
        margins.append(
            completion_logprob(model, tokenizer, pair.prompt, chosen)
            - completion_logprob(model, tokenizer, pair.prompt, rejected)
        )
    if not margins:
        return PreferenceScores(accuracy=0.0, mean_margin=0.0, pairs=0)
    rates: dict[str, float] = {}
    if planning_token_id is not None:
        predictions = [(pair.kind, *planning_predictions(model, tokenizer, pair, planning_token_id)) for pair in pairs]
        rates = {
            "planning_at_rementions": _mean([hit for kind, hit, _ in predictions if kind == "remention"]),
            "planning_at_first_mentions": _mean([hit for kind, hit, _ in predictions if kind == "first_mention"]),
            "planning_elsewhere": _mean([elsewhere for _, _, elsewhere in predictions]),
        }
    return PreferenceScores(
        accuracy=sum(margin > 0 for margin in margins) / len(margins),
        mean_margin=sum(margins) / len(margins),
        pairs=len(margins),
        **rates,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def fit_prompts(pairs: Sequence[PreferencePair], tokenizer: Any, max_prompt_tokens: int) -> list[PreferencePair]:
    """Returns the pairs with their prompts cut to ``max_prompt_tokens`` as training cuts them.

    A pair from a long session would otherwise be scored on its whole conversation: thousands of tokens per
    forward pass, and a context the trained adapter never saw. Pairs left with no prompt are dropped.
    """
    from trainer.train import fit_prompt

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    fitted = []
    for pair in pairs:
        prompt = fit_prompt(pair.prompt, pair.first_mention, count_tokens, max_prompt_tokens)
        if prompt:
            fitted.append(replace(pair, prompt=prompt))
    return fitted


def evaluate_versions(
    *,
    model_path: str,
    new_adapter: str,
    held_out: Sequence[PreferencePair],
    active_adapter: str | None = None,
    convention_adapter: str | None = None,
    max_prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """Scores the base model and each given adapter on the same held-out pairs; keys name the versions.

    With ``max_prompt_tokens`` the pairs' prompts are cut to that budget first, as for training.
    """
    base, tokenizer = load_model_and_tokenizer(model_path)
    if max_prompt_tokens is not None:
        held_out = fit_prompts(held_out, tokenizer, max_prompt_tokens)
    planning_token_id = int(tokenizer.convert_tokens_to_ids(PLANNING_TOKEN))
    results: dict[str, Any] = {"base": asdict(score(base, tokenizer, held_out, planning_token_id))}
    for name, path in (("convention", convention_adapter), ("active", active_adapter), ("new", new_adapter)):
        if path is None:
            continue
        model = PeftModel.from_pretrained(base, path, adapter_name=name)
        model.eval()
        results[name] = asdict(score(model, tokenizer, held_out, planning_token_id))
        base = model.unload()
    return results


def gate(results: dict[str, Any]) -> tuple[bool, str]:
    """Returns whether the new adapter may become active, and why: it must not be worse than what serves now.

    What serves now is the active adapter, else the convention adapter, else the base model. Worse means a lower
    held-out preference accuracy, or a planning token emitted in more places that are not re-mentions.
    """
    reference_name = next(name for name in ("active", "convention", "base") if name in results)
    reference, new = results[reference_name], results["new"]
    if new["accuracy"] < reference["accuracy"]:
        return False, (
            f"held-out preference accuracy {new['accuracy']:.3f} is below the {reference_name} model's "
            f"{reference['accuracy']:.3f}"
        )
    extra = new.get("planning_elsewhere", 0.0) - reference.get("planning_elsewhere", 0.0)
    if extra > MAX_EXTRA_PLANNING_ELSEWHERE:
        return False, (
            f"the planning token is the likeliest token at {new['planning_elsewhere']:.3f} of places that are not "
            f"re-mentions, above the {reference_name} model's {reference.get('planning_elsewhere', 0.0):.3f}"
        )
    return True, (
        f"held-out preference accuracy {new['accuracy']:.3f} is not below the {reference_name} model's "
        f"{reference['accuracy']:.3f}"
    )
