"""Both training stages: the planning token, the stage 1 loss, checkpoints and resuming, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.planning import PLANNING_TOKEN
from adapters.settings import TrainingSettings
from trainer.jobs import TrainingCancelledError
from trainer.mining import PreferencePair, mine_transcripts
from trainer.train import generalized_jsd, marked_texts, planning_loss, train_convention_adapter

MUG = "the small red ceramic mug with the chipped handle"
BOX = "a big cardboard box full of old winter clothes"


def dialogue(index: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"Hi, day {index} of tidying up the flat. Can you help me with the hall?"},
        {"role": "assistant", "content": "Of course. Tell me what needs to go where and I will keep track."},
        {"role": "user", "content": f"Please put {MUG} on the shelf, and {BOX} under the stairs."},
        {"role": "assistant", "content": "Done, both are in the hall now, close to the door and the coat rack."},
        {"role": "user", "content": "Thanks. Tomorrow I will wash the chipped mug and sort the clothes box."},
        {"role": "assistant", "content": "Good plan. I will leave the mug on the shelf until the box is sorted."},
    ]


@pytest.fixture(scope="module")
def pairs() -> list[PreferencePair]:
    return [pair for pair in mine_transcripts(dialogue(index) for index in range(3)) if pair.prompt]


def quick_settings(**overrides: object) -> TrainingSettings:
    values: dict[str, object] = {"sft_epochs": 1, "epochs": 1, "batch_size": 2, "checkpoint_steps": 1, "lora_rank": 4}
    return TrainingSettings(**{**values, **overrides})


def test_marked_texts_mark_rementions_only(pairs: list[PreferencePair]) -> None:
    remention = next(pair for pair in pairs if pair.kind == "remention" and pair.remention == "the chipped mug")
    first = next(pair for pair in pairs if pair.kind == "first_mention")

    chosen, rejected = marked_texts(remention)

    assert chosen == "Thanks. Tomorrow I will wash[remention] the chipped mug and sort the clothes box."
    assert rejected == f"Thanks. Tomorrow I will wash[remention] {MUG} and sort the clothes box."
    assert marked_texts(first) == (first.chosen, first.rejected)


def test_add_planning_token_is_deterministic(tiny_model_path: str) -> None:
    from adapters.base_model import load_model_and_tokenizer

    first, tokenizer = load_model_and_tokenizer(tiny_model_path)
    second, _ = load_model_and_tokenizer(tiny_model_path)
    token_id = tokenizer.convert_tokens_to_ids(PLANNING_TOKEN)
    rows = first.get_input_embeddings().weight

    assert rows.shape[0] == token_id + 1
    assert tokenizer(f"a{PLANNING_TOKEN} b", add_special_tokens=False)["input_ids"].count(token_id) == 1
    assert torch.allclose(rows[token_id], rows[:token_id].mean(dim=0))
    assert torch.equal(rows, second.get_input_embeddings().weight)
    assert first.get_output_embeddings().weight.shape[0] == token_id + 1


def test_generalized_jsd_bounds() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 11)

    symmetric = generalized_jsd(student, teacher, 0.5)
    teacher_kl = (teacher.log_softmax(-1).exp() * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum(-1)

    assert torch.allclose(generalized_jsd(student, student, 0.5), torch.zeros(5), atol=1e-6)
    assert torch.allclose(symmetric, generalized_jsd(teacher, student, 0.5), atol=1e-6)
    assert bool((symmetric > 0).all())
    assert bool((symmetric <= torch.log(torch.tensor(2.0)) + 1e-6).all())
    assert torch.allclose(generalized_jsd(student, teacher, 1.0), teacher_kl, atol=1e-5)


def test_planning_loss_splits_positions() -> None:
    vocabulary, planning_id = 7, 6
    labels = torch.tensor([[-100, -100, 3, planning_id, 4, 5]])
    reference = torch.randn(1, 6, vocabulary)
    logits = reference.clone()
    logits[0, 2, planning_id] = 5.0  # predicts the planning token at the position before it

    same, parts = planning_loss(
        logits, reference, labels, planning_token_id=planning_id, jsd_beta=0.5, divergence_weight=1.0
    )
    logits[0, 3, 0] += 4.0  # changes the prediction of an ordinary completion token
    moved, moved_parts = planning_loss(
        logits, reference, labels, planning_token_id=planning_id, jsd_beta=0.5, divergence_weight=1.0
    )

    expected = torch.nn.functional.cross_entropy(logits[0, 2:3], torch.tensor([planning_id]))
    assert parts["divergence"] == pytest.approx(0.0, abs=1e-6)
    assert parts["planning_ce"] == pytest.approx(float(expected), rel=1e-5)
    # Four completion tokens: the loss is the summed cross-entropy over that count.
    assert float(same) == pytest.approx(parts["planning_ce"] / 4, rel=1e-5)
    assert moved_parts["divergence"] > 0.01
    assert float(moved) > float(same)


def test_training_saves_lora_and_planning_row(
    tiny_model_path: str, pairs: list[PreferencePair], tmp_path: Path
) -> None:
    progress: list[str] = []
    first_apo_step: dict[str, float] = {}

    def record(message: str, metrics: dict[str, float]) -> None:
        progress.append(message)
        if metrics.get("stage") == "APO" and not first_apo_step:
            first_apo_step.update(metrics)

    result = train_convention_adapter(
        model_path=tiny_model_path,
        pairs=pairs,
        output_dir=tmp_path / "adapter",
        settings=quick_settings(),
        work_dir=tmp_path / "work",
        on_progress=record,
    )
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))

    assert result.sft_steps > 0
    assert result.steps > 0
    assert any(name.endswith("trainable_tokens_delta") for name in weights)
    assert any("lora_A" in name for name in weights)
    assert not any("base_layer" in name for name in weights), "the full embedding matrix must not be saved"
    assert any(message.startswith("SFT step") for message in progress)
    assert any(message.startswith("APO step") for message in progress)
    # Stage 2's reference is the stage 1 model, planning token row included, so the first rewards are zero.
    assert first_apo_step["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first_apo_step["rewards/rejected"] == pytest.approx(0.0, abs=1e-4)


def test_stopped_training_resumes_from_checkpoint(
    tiny_model_path: str, pairs: list[PreferencePair], tmp_path: Path
) -> None:
    calls = {"count": 0}

    def stop_after_three_steps() -> bool:
        calls["count"] += 1
        return calls["count"] > 3

    with pytest.raises(TrainingCancelledError):
        train_convention_adapter(
            model_path=tiny_model_path,
            pairs=pairs,
            output_dir=tmp_path / "adapter",
            settings=quick_settings(sft_epochs=4),
            work_dir=tmp_path / "work",
            should_stop=stop_after_three_steps,
        )
    checkpoints = sorted(path.name for path in (tmp_path / "work" / "sft").glob("checkpoint-*"))
    steps: list[tuple[str, int]] = []
    resumed = train_convention_adapter(
        model_path=tiny_model_path,
        pairs=pairs,
        output_dir=tmp_path / "adapter",
        settings=quick_settings(sft_epochs=4),
        work_dir=tmp_path / "work",
        on_progress=lambda _, metrics: steps.append((metrics["stage"], metrics["step"])),
    )

    assert len(checkpoints) == 1, "a stopped run leaves its last checkpoint"
    saved_step = int(checkpoints[0].removeprefix("checkpoint-"))
    assert min(step for stage, step in steps if stage == "SFT") == saved_step + 1, "stage 1 goes on from there"
    assert resumed.steps > 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "work" / "sft").exists(), "stage 1 checkpoints are removed once stage 1 is saved"


def test_continuing_from_an_adapter_keeps_its_planning_row(
    tiny_model_path: str, pairs: list[PreferencePair], tmp_path: Path
) -> None:
    train_convention_adapter(
        model_path=tiny_model_path,
        pairs=pairs,
        output_dir=tmp_path / "convention",
        settings=quick_settings(),
        work_dir=tmp_path / "work-convention",
    )
    start = load_file(str(tmp_path / "convention" / "adapter_model.safetensors"))
    train_convention_adapter(
        model_path=tiny_model_path,
        pairs=pairs,
        output_dir=tmp_path / "partner",
        settings=quick_settings(sft_epochs=0),
        work_dir=tmp_path / "work-partner",
        start_adapter=str(tmp_path / "convention"),
    )
    continued = load_file(str(tmp_path / "partner" / "adapter_model.safetensors"))

    assert set(continued) == set(start)
    lora_names = [name for name in start if "lora_B" in name]
    assert any(not torch.equal(start[name], continued[name]) for name in lora_names), "stage 2 changed the LoRA"
