"""Post-training the base model on a dialogue corpus: the convention adapter that serves by default."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from adapters.keys import Keys
from adapters.registry import CONVENTION_OWNER, AdapterRegistry
from adapters.settings import Settings
from trainer.corpus import load_corpus
from trainer.mining import mine_transcripts
from trainer.worker import InsufficientDataError, Published, train_and_register

logger = logging.getLogger(__name__)


def post_train(
    settings: Settings,
    corpus_path: Path,
    *,
    report: Callable[[str, dict[str, Any]], None],
    max_pairs: int | None = None,
) -> Published:
    """Mines ``corpus_path``, trains both stages from the base model and registers the convention adapter.

    The new version becomes the active convention adapter when the evaluation gate allows it. Running the same
    corpus again after an interruption resumes from the last checkpoint.
    """
    dialogues = load_corpus(corpus_path)
    # A mention in a dialogue's first message has no conversation before it to condition on.
    pairs = [pair for pair in mine_transcripts(dialogue.messages for dialogue in dialogues) if pair.prompt]
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    report(f"Mined {len(pairs)} preference pairs from {len(dialogues)} dialogues in {corpus_path}", {})
    if len(pairs) < settings.training.min_pairs:
        raise InsufficientDataError(
            f"{corpus_path} gave {len(pairs)} preference pairs; at least {settings.training.min_pairs} are needed. "
            "A corpus needs dialogues in which a long first mention is later re-mentioned in a shorter form."
        )

    digest = hashlib.sha256(corpus_path.read_bytes()).hexdigest()[:16]
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=30)
    registry = AdapterRegistry(client, Keys(settings.key_prefix))
    return train_and_register(
        settings,
        registry,
        owner=CONVENTION_OWNER,
        pairs=pairs,
        work_name=f"corpus-{digest}-{len(pairs)}",
        report=report,
    )
