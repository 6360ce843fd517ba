"""Training a partner's LoRA adapter with TRL's DPOTrainer and the APO-zero loss.

Importing this module loads torch, transformers and TRL; the worker imports it only when a job runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from adapters.settings import TrainingSettings
from trainer.jobs import TrainingCancelledError
from trainer.mining import PreferencePair

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingResult:
    """Summary of one finished training run."""

    steps: int
    trained_tokens: int
    train_loss: float
    seconds: float


_SWAPPED_ROLES = {"user": "assistant", "assistant": "user"}


def _prompt_for(pair: PreferencePair) -> list[dict[str, str]]:
    """Returns the pair's prompt seen from the speaker of the re-mention.

    A re-mention in a partner's line is trained as the model's own line, so user and assistant roles are
    swapped in the prompt: the model then learns to adopt the partner's short forms in the same position.
    """
    if pair.role != "user":
        return [dict(message) for message in pair.prompt]
    return [
        {"role": _SWAPPED_ROLES.get(message["role"], message["role"]), "content": message["content"]}
        for message in pair.prompt
    ]


def fit_prompt(
    prompt: list[dict[str, str]], first_mention: str, count_tokens: Callable[[str], int], budget: int
) -> list[dict[str, str]]:
    """Keeps the system messages, the latest message with the first mention and the newest messages in budget.

    Long sessions would otherwise make every training step pay for the whole conversation.
    """
    system = [message for message in prompt if message["role"] == "system"]
    rest = [message for message in prompt if message["role"] != "system"]
    anchor = next((message for message in reversed(rest) if first_mention in message["content"]), None)
    if anchor is not None and count_tokens(anchor["content"]) > budget:
        anchor = None

    used = sum(count_tokens(message["content"]) for message in system)
    used += count_tokens(anchor["content"]) if anchor is not None else 0
    tail: list[dict[str, str]] = []
    for message in reversed(rest):
        if message is anchor:
            break
        cost = count_tokens(message["content"])
        if used + cost > budget:
            break
        tail.insert(0, message)
        used += cost

    middle = [anchor] if anchor is not None else []
    return [*system, *middle, *tail]


def pairs_to_records(
    pairs: Sequence[PreferencePair], count_tokens: Callable[[str], int], settings: TrainingSettings
) -> list[dict[str, Any]]:
    """Turns preference pairs into TRL's conversational preference format, within the token budgets.

    Pairs whose completion does not fit beside the prompt budget, or that have no prompt left, are skipped.
    """
    completion_budget = settings.max_length - settings.max_prompt_tokens
    records = []
    for pair in pairs:
        prompt = fit_prompt(_prompt_for(pair), pair.first_mention, count_tokens, settings.max_prompt_tokens)
        if not prompt or count_tokens(pair.rejected) > completion_budget:
            continue
        records.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
        )
    return records


def train_lora_adapter(
    *,
    model_path: str,
    pairs: Sequence[PreferencePair],
    output_dir: Path,
    settings: TrainingSettings,
    work_dir: Path,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on ``pairs`` and save it (adapter files only) into ``output_dir``.

    ``should_stop`` is asked after every step; when it returns True, training stops and TrainingCancelledError
    is raised before anything is saved.
    """
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    config = DPOConfig(
        output_dir=str(work_dir),
        loss_type=["apo_zero"],
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        max_length=settings.max_length,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    records = pairs_to_records(pairs, count_tokens, settings)
    if not records:
        raise ValueError(
            f"none of the {len(pairs)} preference pairs fits max_prompt_tokens={settings.max_prompt_tokens} "
            f"and max_length={settings.max_length}; raise these limits in the training settings"
        )

    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=_callbacks(on_progress, should_stop),
    )

    started = time.monotonic()
    output = trainer.train()
    if should_stop is not None and should_stop():
        raise TrainingCancelledError(str(work_dir))
    trainer.model.save_pretrained(str(output_dir))
    trained_tokens = _count_tokens(trainer)
    return TrainingResult(
        steps=output.global_step,
        trained_tokens=trained_tokens,
        train_loss=float(output.training_loss),
        seconds=time.monotonic() - started,
    )


def _count_tokens(trainer: Any) -> int:
    dataset = trainer.train_dataset
    columns = [name for name in ("prompt_ids", "chosen_ids", "rejected_ids") if name in dataset.column_names]
    epochs = int(trainer.args.num_train_epochs)
    return epochs * sum(len(ids) for name in columns for ids in dataset[name])


def _callbacks(on_progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = []
    if on_progress is not None:
        callbacks.append(StepProgressCallback(on_progress))
    if should_stop is not None:
        callbacks.append(StopCallback(should_stop))
    return callbacks


class StopCallback(TrainerCallback):
    """Stops training at the end of the step in which ``should_stop`` first returns True."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.should_stop():
            control.should_training_stop = True


class StepProgressCallback(TrainerCallback):
    """Forwards Trainer's step logs (loss, rewards, learning rate) to a progress callback."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        if not logs:
            return
        metrics: dict[str, Any] = {key: value for key, value in logs.items() if isinstance(value, int | float)}
        metrics["step"] = state.global_step
        metrics["total_steps"] = state.max_steps
        self.on_progress(_step_message(state.global_step, state.max_steps, metrics), metrics)


def _step_message(step: int, total_steps: int, metrics: dict[str, Any]) -> str:
    """Returns a one-line summary such as 'Step 3/50: loss 0.6931, reward margin 0.0123'."""
    parts = [f"{label} {metrics[key]:.4f}" for key, label in _STEP_METRICS if key in metrics]
    return f"Step {step}/{total_steps}" + (": " + ", ".join(parts) if parts else "")


_STEP_METRICS = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin"),
    ("rewards/accuracies", "preference accuracy"),
    ("train_loss", "mean training loss"),
)
