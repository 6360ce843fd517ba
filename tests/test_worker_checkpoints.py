"""Checkpoints of a requeued training job are resumed only when the job trains on the same pairs again."""

from __future__ import annotations

from pathlib import Path

from trainer.mining import PreferencePair
from trainer.worker import _drop_stale_checkpoints


def pair(text: str) -> PreferencePair:
    return PreferencePair(
        prompt=[{"role": "user", "content": text}],
        chosen="the mug",
        rejected="the small red mug",
        role="user",
        first_mention="the small red mug",
        remention="the mug",
    )


def first_attempt(work_dir: Path, pairs: list[PreferencePair]) -> Path:
    _drop_stale_checkpoints(work_dir, pairs, lambda message, metrics: None)
    checkpoint = work_dir / "checkpoints" / "stage2" / "checkpoint-20"
    checkpoint.mkdir(parents=True)
    return checkpoint


def test_same_pairs_keep_checkpoints(tmp_path: Path) -> None:
    checkpoint = first_attempt(tmp_path / "work", [pair("a")])
    _drop_stale_checkpoints(tmp_path / "work", [pair("a")], lambda message, metrics: None)

    assert checkpoint.is_dir()


def test_changed_pairs_drop_checkpoints(tmp_path: Path) -> None:
    checkpoint = first_attempt(tmp_path / "work", [pair("a")])
    messages: list[str] = []
    _drop_stale_checkpoints(
        tmp_path / "work", [pair("a"), pair("b")], lambda message, metrics: messages.append(message)
    )

    assert not checkpoint.exists()
    assert (tmp_path / "work").is_dir()
    assert len(messages) == 1
