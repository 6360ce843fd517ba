"""Post-training on a corpus registers the convention adapter; partner training continues from it."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from typer.testing import CliRunner

from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER, AdapterRegistry
from adapters.settings import Settings
from clients.cli import app
from tests.test_train import dialogue
from trainer.mining import mine_transcripts
from trainer.posttrain import post_train
from trainer.worker import train_and_register


def write_corpus(path: Path, count: int) -> Path:
    lines = [json.dumps({"id": f"hall-{index}", "messages": dialogue(index)}) for index in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def quick(settings: Settings) -> Settings:
    training = settings.training.model_copy(
        update={"sft_epochs": 1, "epochs": 1, "lora_rank": 4, "checkpoint_steps": 50, "min_pairs": 2}
    )
    return settings.model_copy(update={"training": training})


def test_post_train_registers_convention_adapter(
    tiny_settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = quick(tiny_settings)
    messages: list[str] = []

    published = post_train(
        settings, write_corpus(tmp_path / "corpus.jsonl", 4), report=lambda message, _: messages.append(message)
    )
    registry = AdapterRegistry(redis_client, Keys(settings.key_prefix))
    stored = registry.get(CONVENTION_OWNER, 1)

    assert published.adapter.name == f"{CONVENTION_OWNER}/1"
    assert Path(stored.path, "adapter_model.safetensors").is_file()
    assert stored.metrics["sft_steps"] > 0
    assert stored.metrics["steps"] > 0
    assert set(published.evaluation) == {"base", "new"}
    assert (registry.active_version(CONVENTION_OWNER) == 1) is published.activated
    assert messages[0].startswith("Mined ")
    assert "4 dialogues" in messages[0]
    assert not list((settings.artifact_dir / CONVENTION_OWNER).glob(".work-*")), "the work folder is removed"
    assert CONVENTION_OWNER not in redis_client.smembers(Keys(settings.key_prefix).partners())


def test_partner_training_continues_from_convention_adapter(
    tiny_settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = quick(tiny_settings)
    post_train(settings, write_corpus(tmp_path / "corpus.jsonl", 3), report=lambda *_: None)
    registry = AdapterRegistry(redis_client, Keys(settings.key_prefix))
    registry.activate(CONVENTION_OWNER, 1)
    pairs = [pair for pair in mine_transcripts(dialogue(index) for index in range(10, 13)) if pair.prompt]

    published = train_and_register(
        settings, registry, owner="olga", pairs=pairs, work_name="test-job", report=lambda *_: None
    )

    assert published.started_from == f"{CONVENTION_OWNER}/1"
    assert published.adapter.metrics["started_from"] == f"{CONVENTION_OWNER}/1"
    assert {"base", "convention", "new"} <= set(published.evaluation)


def test_post_train_command_rejects_bad_corpus(tiny_settings: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "broken.jsonl"
    corpus.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")

    result = CliRunner().invoke(app, ["post-train", "--corpus", str(corpus)])
    missing = CliRunner().invoke(app, ["post-train", "--corpus", str(tmp_path / "nowhere.jsonl")])

    assert result.exit_code == 2
    assert "broken.jsonl:2" in result.output
    assert missing.exit_code == 2
    assert "corpus file not found" in missing.output


def test_corpus_convert_command(tmp_path: Path) -> None:
    source = Path(__file__).parents[1] / "trainer" / "data" / "sample_dailydialog.txt"
    output = tmp_path / "converted.jsonl"

    result = CliRunner().invoke(app, ["corpus", "convert", "--from", "dailydialog", str(source), str(output)])
    unknown = CliRunner().invoke(app, ["corpus", "convert", "--from", "csv", str(source), str(output)])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Wrote 3 dialogues")
    assert len(output.read_text(encoding="utf-8").splitlines()) == 3
    assert unknown.exit_code == 2
    assert "sharegpt" in unknown.output
