"""The two training stages of the convention-formation recipe, on a LoRA adapter.

Stage 1 (SFT) teaches the planning token. Only the new token's embedding row and the LoRA weights train. The
loss is the cross-entropy of the planning token where a re-mention follows, plus a generalised Jensen-Shannon
divergence that keeps the distribution at every other token close to the starting model. Stage 2 is preference
optimisation with TRL's DPOTrainer and the APO-zero loss on the minimal pairs, starting from stage 1.

Importing this module loads torch, transformers and TRL; the worker imports it only when a job runs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from trl.trainer.utils import use_adapter

from adapters.base_model import add_planning_token
from adapters.planning import insert_marker
from adapters.settings import TrainingSettings
from trainer.jobs import TrainingCancelledError
from trainer.mining import PreferencePair

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingResult:
    """Summary of one finished training run (both stages)."""

    steps: int
    sft_steps: int
    trained_tokens: int
    train_loss: float
    sft_loss: float | None
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


def marked_texts(pair: PreferencePair) -> tuple[str, str]:
    """Returns the pair's chosen and rejected texts, with the planning token before a re-mention.

    Both texts of a re-mention pair carry the token at the same place, so the pair differs only in the mention.
    A first mention is not a re-mention, so first-mention pairs stay unmarked.
    """
    if pair.kind != "remention":
        return pair.chosen, pair.rejected
    return insert_marker(pair.chosen, pair.mention_start), insert_marker(pair.rejected, pair.mention_start)


def _fitted_prompt(
    pair: PreferencePair, count_tokens: Callable[[str], int], settings: TrainingSettings
) -> list[dict[str, str]] | None:
    """Returns the pair's prompt within budget, or None when the pair does not fit the token budgets."""
    completion_budget = settings.max_length - settings.max_prompt_tokens
    prompt = fit_prompt(_prompt_for(pair), pair.first_mention, count_tokens, settings.max_prompt_tokens)
    if not prompt or count_tokens(pair.rejected) + 1 > completion_budget:
        return None
    return prompt


def pairs_to_records(
    pairs: Sequence[PreferencePair], count_tokens: Callable[[str], int], settings: TrainingSettings
) -> list[dict[str, Any]]:
    """Turns preference pairs into TRL's conversational preference format, within the token budgets.

    Pairs whose completion does not fit beside the prompt budget, or that have no prompt left, are skipped.
    """
    records = []
    for pair in pairs:
        prompt = _fitted_prompt(pair, count_tokens, settings)
        if prompt is None:
            continue
        chosen, rejected = marked_texts(pair)
        records.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return records


def planning_records(
    pairs: Sequence[PreferencePair], count_tokens: Callable[[str], int], settings: TrainingSettings
) -> list[dict[str, Any]]:
    """Returns stage 1's prompt-completion records: each re-mention line with the planning token before it."""
    records = []
    for pair in pairs:
        prompt = _fitted_prompt(pair, count_tokens, settings) if pair.kind == "remention" else None
        if prompt is None:
            continue
        chosen, _ = marked_texts(pair)
        records.append({"prompt": prompt, "completion": [{"role": "assistant", "content": chosen}]})
    return records


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Returns the generalised Jensen-Shannon divergence per position (last dimension: the vocabulary).

    With the mixture M = beta * teacher + (1 - beta) * student, the divergence is
    beta * KL(teacher || M) + (1 - beta) * KL(student || M); beta = 0.5 is the symmetric Jensen-Shannon divergence.
    """
    student = torch.log_softmax(student_logits.float(), dim=-1)
    teacher = torch.log_softmax(teacher_logits.float(), dim=-1)
    if beta <= 0:
        return torch.zeros(student.shape[:-1], device=student.device)
    if beta >= 1:
        return (teacher.exp() * (teacher - student)).sum(-1)
    mixture = torch.logsumexp(
        torch.stack([student + torch.log(torch.tensor(1 - beta)), teacher + torch.log(torch.tensor(beta))]), dim=0
    )
    kl_teacher = (teacher.exp() * (teacher - mixture)).sum(-1)
    kl_student = (student.exp() * (student - mixture)).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def planning_loss(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    planning_token_id: int,
    jsd_beta: float,
    divergence_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Returns stage 1's loss: planning-token cross-entropy plus the divergence at every other completion token.

    Both terms are summed over their positions and divided by the number of completion tokens, so one position
    weighs the same in either term. A mean per term would let the few planning positions outweigh the many
    others, and the token would then spread to places where no re-mention follows.
    ``labels`` are the input ids with -100 outside the completion; logits at position t predict label t + 1.
    """
    targets = labels[:, 1:]
    logits, reference_logits = logits[:, :-1], reference_logits[:, :-1]
    planning = targets == planning_token_id
    others = (targets != -100) & ~planning
    tokens = max(int((targets != -100).sum()), 1)

    zero = logits.sum() * 0.0
    cross_entropy = (
        torch.nn.functional.cross_entropy(logits[planning].float(), targets[planning], reduction="sum")
        if planning.any()
        else zero
    )
    divergence = generalized_jsd(logits[others], reference_logits[others], jsd_beta).sum() if others.any() else zero
    loss = (cross_entropy + divergence_weight * divergence) / tokens
    parts = {
        "planning_ce": float(cross_entropy.detach()) / max(int(planning.sum()), 1),
        "divergence": float(divergence.detach()) / max(int(others.sum()), 1),
    }
    return loss, parts


class AdapterCheckpoints:
    """Saves checkpoints with the adapters' own weights only.

    peft would otherwise add the whole embedding matrix to every checkpoint, because the planning token made the
    vocabulary larger than the base model's saved config records. Every process rebuilds that matrix the same way.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        folder = Path(output_dir or self.args.output_dir)  # type: ignore[attr-defined]
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), save_embedding_layers=False)  # type: ignore[attr-defined]
        torch.save(self.args, folder / "training_args.bin")  # type: ignore[attr-defined]


class PreferenceTrainer(AdapterCheckpoints, DPOTrainer):
    """TRL's DPOTrainer (stage 2) with adapter-only checkpoints, whose reference is exactly the stage 1 model."""

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        _copy_trainable_tokens(self.model, "default", "ref")
        return super()._precompute_ref_logps(dataset, name, batch_size)


class PlanningSFTTrainer(AdapterCheckpoints, SFTTrainer):
    """TRL's SFTTrainer with stage 1's loss; the reference is the adapter ``reference_adapter`` or, if None, the
    model with its adapters disabled."""

    def __init__(
        self,
        *args: Any,
        planning_token_id: int,
        jsd_beta: float,
        divergence_weight: float,
        reference_adapter: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.planning_token_id = planning_token_id
        self.jsd_beta = jsd_beta
        self.divergence_weight = divergence_weight
        self.reference_adapter = reference_adapter

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        outputs = model(**model_inputs, use_cache=False)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), use_adapter(unwrapped, self.reference_adapter):
            reference_logits = model(**model_inputs, use_cache=False).logits
        loss, parts = planning_loss(
            outputs.logits,
            reference_logits,
            inputs["labels"],
            planning_token_id=self.planning_token_id,
            jsd_beta=self.jsd_beta,
            divergence_weight=self.divergence_weight,
        )
        if model.training:
            for name, value in parts.items():
                self._metrics["train"][name].append(value)
        return (loss, outputs) if return_outputs else loss


def load_trainable_model(
    model_path: str, settings: TrainingSettings, start_adapter: str | None
) -> tuple[PeftModel, Any, int]:
    """Loads the base model with the planning token and a trainable adapter: a copy of ``start_adapter`` or a
    new LoRA whose trainable token is the planning token. Returns the model, tokenizer and planning token id."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path)
    planning_token_id = add_planning_token(model, tokenizer)
    if start_adapter is not None:
        peft_model = PeftModel.from_pretrained(model, start_adapter, adapter_name="default", is_trainable=True)
        peft_model.load_adapter(start_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        peft_model.set_adapter("default")
        return _with_head_bias(peft_model), tokenizer, planning_token_id
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        trainable_token_indices=[planning_token_id],
        task_type="CAUSAL_LM",
    )
    return _with_head_bias(get_peft_model(model, lora)), tokenizer, planning_token_id


def _with_head_bias(model: PeftModel) -> PeftModel:
    """Gives peft's wrapper of a tied output layer the ``bias`` attribute that TRL's fused output layer reads.

    The wrapper returns the adapter's trained rows as ``weight`` but has no ``bias``. The wrapped layer's bias
    (None for tied embeddings) is the right value.
    """
    head = model.get_output_embeddings()
    try:
        head.bias  # noqa: B018
    except AttributeError:
        head.bias = getattr(head.original_module, "bias", None)
    return model


REFERENCE_ADAPTER = "reference"
_SFT_FINAL = "sft-final"


def train_convention_adapter(
    *,
    model_path: str,
    pairs: Sequence[PreferencePair],
    output_dir: Path,
    settings: TrainingSettings,
    work_dir: Path,
    start_adapter: str | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Runs both stages on ``pairs`` and saves the adapter (its files only) into ``output_dir``.

    ``start_adapter`` is the folder of an adapter to continue from (the convention adapter, for a partner);
    without it, a new LoRA adapter starts from the base model. ``work_dir`` keeps checkpoints: a second call
    with the same ``work_dir`` resumes where the first one stopped. ``should_stop`` is asked after every step;
    when it returns True, training stops and TrainingCancelledError is raised before anything is saved.
    """
    torch.manual_seed(settings.seed)
    started = time.monotonic()
    model, tokenizer, planning_token_id = load_trainable_model(model_path, settings, start_adapter)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    preference = pairs_to_records(pairs, count_tokens, settings)
    if not preference:
        raise ValueError(
            f"none of the {len(pairs)} preference pairs fits max_prompt_tokens={settings.max_prompt_tokens} "
            f"and max_length={settings.max_length}; raise these limits in the training settings"
        )
    planning = planning_records(pairs, count_tokens, settings)

    sft_steps, sft_loss, sft_tokens = 0, None, 0
    sft_final = work_dir / _SFT_FINAL
    if (sft_final / "adapter_config.json").is_file():
        model.load_adapter(str(sft_final), adapter_name="default", is_trainable=True)
        model.set_adapter("default")
        _report(on_progress, "Stage 1 (planning token SFT) already done; resuming with stage 2", {"stage": "sft"})
    elif settings.sft_epochs > 0 and planning:
        sft = PlanningSFTTrainer(
            model=model,
            args=_sft_config(settings, work_dir / "sft"),
            optimizers=(_planning_optimizer(model, settings), None),
            train_dataset=Dataset.from_list(planning),
            processing_class=tokenizer,
            callbacks=_callbacks("SFT", on_progress, should_stop),
            planning_token_id=planning_token_id,
            jsd_beta=settings.jsd_beta,
            divergence_weight=settings.divergence_weight,
            reference_adapter=REFERENCE_ADAPTER if start_adapter is not None else None,
        )
        output = sft.train(resume_from_checkpoint=get_last_checkpoint(str(work_dir / "sft")))
        _raise_if_stopped(should_stop, work_dir)
        sft_steps, sft_loss = output.global_step, float(output.training_loss)
        sft_tokens = settings.sft_epochs * sum(len(ids) for ids in sft.train_dataset["input_ids"])
        model.save_pretrained(str(sft_final), selected_adapters=["default"], save_embedding_layers=False)
        shutil.rmtree(work_dir / "sft", ignore_errors=True)

    if REFERENCE_ADAPTER in model.peft_config:
        # DPOTrainer copies the current adapter as its reference, which is what stage 2 starts from.
        model.delete_adapter(REFERENCE_ADAPTER)
        model.set_adapter("default")
    dpo = PreferenceTrainer(
        model=model,
        args=_dpo_config(settings, work_dir / "apo"),
        train_dataset=Dataset.from_list(preference),
        processing_class=tokenizer,
        callbacks=_callbacks("APO", on_progress, should_stop),
    )
    output = dpo.train(resume_from_checkpoint=get_last_checkpoint(str(work_dir / "apo")))
    _raise_if_stopped(should_stop, work_dir)
    model.save_pretrained(str(output_dir), selected_adapters=["default"], save_embedding_layers=False)
    return TrainingResult(
        steps=output.global_step,
        sft_steps=sft_steps,
        trained_tokens=sft_tokens + _count_tokens(dpo),
        train_loss=float(output.training_loss),
        sft_loss=sft_loss,
        seconds=time.monotonic() - started,
    )


def _planning_optimizer(model: PeftModel, settings: TrainingSettings) -> torch.optim.Optimizer:
    """Returns AdamW with the planning token's embedding row at its own, higher learning rate.

    The row starts as the mean embedding, far from where the token becomes likely, and at the LoRA learning
    rate it would need many more steps than a partner's data gives.
    """
    token_rows, others = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (token_rows if "trainable_tokens_delta" in name else others).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": others, "lr": settings.sft_learning_rate},
            {"params": token_rows, "lr": settings.token_learning_rate},
        ],
        weight_decay=0.0,
    )


def _copy_trainable_tokens(model: PeftModel, source: str, target: str) -> None:
    """Copies the trained token rows of adapter ``source`` into ``target``.

    DPOTrainer builds its reference adapter by copying the parameters whose names contain ".default.", which
    misses the trainable token rows (their names end in ".default").
    """
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, parameter in parameters.items():
            twin = name[: -len(source)] + target
            if "trainable_tokens_delta" in name and name.endswith(f".{source}") and twin in parameters:
                parameters[twin].copy_(parameter)


def _raise_if_stopped(should_stop: Callable[[], bool] | None, work_dir: Path) -> None:
    if should_stop is not None and should_stop():
        raise TrainingCancelledError(str(work_dir))


def _report(on_progress: ProgressCallback | None, message: str, metrics: dict[str, Any]) -> None:
    if on_progress is not None:
        on_progress(message, metrics)


def _common_arguments(settings: TrainingSettings, output_dir: Path) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": settings.checkpoint_steps,
        "save_total_limit": 1,
        "report_to": [],
        "seed": settings.seed,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": False,
    }


def _sft_config(settings: TrainingSettings, output_dir: Path) -> SFTConfig:
    return SFTConfig(
        **_common_arguments(settings, output_dir),
        learning_rate=settings.sft_learning_rate,
        num_train_epochs=settings.sft_epochs,
        completion_only_loss=True,
    )


def _dpo_config(settings: TrainingSettings, output_dir: Path) -> DPOConfig:
    return DPOConfig(
        **_common_arguments(settings, output_dir),
        loss_type=["apo_zero"],
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        precompute_ref_log_probs=True,
    )


def _count_tokens(trainer: Any) -> int:
    dataset = trainer.train_dataset
    columns = [name for name in ("prompt_ids", "chosen_ids", "rejected_ids") if name in dataset.column_names]
    epochs = int(trainer.args.num_train_epochs)
    return epochs * sum(len(ids) for name in columns for ids in dataset[name])


def _callbacks(
    stage: str, on_progress: ProgressCallback | None, should_stop: Callable[[], bool] | None
) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = []
    if on_progress is not None:
        callbacks.append(StepProgressCallback(stage, on_progress))
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

    def __init__(self, stage: str, on_progress: ProgressCallback) -> None:
        self.stage = stage
        self.on_progress = on_progress

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        if not logs:
            return
        metrics: dict[str, Any] = {key: value for key, value in logs.items() if isinstance(value, int | float)}
        metrics["step"] = state.global_step
        metrics["total_steps"] = state.max_steps
        metrics["stage"] = self.stage
        self.on_progress(_step_message(self.stage, state.global_step, state.max_steps, metrics), metrics)


def _step_message(stage: str, step: int, total_steps: int, metrics: dict[str, Any]) -> str:
    """Returns a one-line summary such as 'APO step 3/50: loss 0.6931, reward margin 0.0123'."""
    parts = [f"{label} {metrics[key]:.4f}" for key, label in _STEP_METRICS if key in metrics]
    return f"{stage} step {step}/{total_steps}" + (": " + ", ".join(parts) if parts else "")


_STEP_METRICS = (
    ("loss", "loss"),
    ("planning_ce", "planning-token cross-entropy"),
    ("divergence", "divergence"),
    ("rewards/margins", "reward margin"),
    ("rewards/accuracies", "preference accuracy"),
    ("train_loss", "mean training loss"),
)
