"""Held-out evaluation of an adapter on preference pairs, and the gate that decides whether it becomes active.

Preference accuracy is the share of held-out pairs whose chosen completion gets a higher log-likelihood than
the rejected one. The margin is the mean of that log-likelihood difference. Both are measured for the base
model, the currently active adapter (if any) and the new adapter, on the same pairs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.mining import PreferencePair

logger = logging.getLogger(__name__)

HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class PreferenceScores:
    """Preference accuracy and mean margin of one model on held-out pairs."""

    accuracy: float
    mean_margin: float
    pairs: int


def split_pairs(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Splits pairs into training and held-out sets by a hash of their text, so a pair stays on one side."""
    train, held_out = [], []
    for pair in pairs:
        digest = hashlib.sha256(f"{pair.chosen}\n{pair.rejected}".encode()).digest()
        (held_out if digest[0] < 256 * HELD_OUT_SHARE else train).append(pair)
    if not held_out and len(train) > 1:
        held_out.append(train.pop())
    return train, held_out


@torch.inference_mode()
def completion_logprob(model: Any, tokenizer: Any, prompt: list[dict[str, str]], completion: str) -> float:
    """Returns the summed log-probability of ``completion`` as the assistant's reply after ``prompt``."""
    rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt_ids + completion_ids])
    logprobs = torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].float(), dim=-1)
    targets = input_ids[0, 1:]
    picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
    return float(picked[len(prompt_ids) - 1 :].sum())


def score(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair]) -> PreferenceScores:
    margins = [
        completion_logprob(model, tokenizer, pair.prompt, pair.chosen)
        - completion_logprob(model, tokenizer, pair.prompt, pair.rejected)
        for pair in pairs
    ]
    if not margins:
        return PreferenceScores(accuracy=0.0, mean_margin=0.0, pairs=0)
    return PreferenceScores(
        accuracy=sum(margin > 0 for margin in margins) / len(margins),
        mean_margin=sum(margins) / len(margins),
        pairs=len(margins),
    )


def evaluate_versions(
    *, model_path: str, new_adapter: str, active_adapter: str | None, held_out: Sequence[PreferencePair]
) -> dict[str, Any]:
    """Scores the base model, the active adapter and the new adapter on the same held-out pairs."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    base.eval()
    results: dict[str, Any] = {"base": asdict(score(base, tokenizer, held_out))}
    for name, path in (("active", active_adapter), ("new", new_adapter)):
        if path is None:
            continue
        model = PeftModel.from_pretrained(base, path, adapter_name=name)
        model.eval()
        results[name] = asdict(score(model, tokenizer, held_out))
        base = model.unload()
    return results


def gate(results: dict[str, Any]) -> tuple[bool, str]:
    """Returns whether the new adapter may become active, and why: it must not be worse than what serves now."""
    reference_name = "active" if "active" in results else "base"
    reference, new = results[reference_name], results["new"]
    if new["accuracy"] < reference["accuracy"]:
        return False, (
            f"held-out preference accuracy {new['accuracy']:.3f} is below the {reference_name} model's "
            f"{reference['accuracy']:.3f}"
        )
    return True, (
        f"held-out preference accuracy {new['accuracy']:.3f} is not below the {reference_name} model's "
        f"{reference['accuracy']:.3f}"
    )
