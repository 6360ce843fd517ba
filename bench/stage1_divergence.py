"""Stage 1 (planning token SFT) alone, for several divergence weights: where does the planning token go?

Usage: python -m bench.stage1_divergence [WEIGHT ...]  (default: 1 4)

Trains stage 1 from the base model on the first 120 pairs mined from the sample corpus (the same split as
``post-train --max-pairs 120``) and prints, per weight, the held-out preference accuracy and the planning-token
rates of trainer.evaluate. Each weight takes several minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from adapters.base_model import resolve_model_path
from adapters.settings import Settings, TrainingSettings
from trainer.corpus import load_corpus
from trainer.evaluate import evaluate_versions, split_pairs
from trainer.jobs import TrainingCancelledError
from trainer.mining import mine_transcripts
from trainer.train import train_convention_adapter

SAMPLE_CORPUS = Path(__file__).parents[1] / "trainer" / "data" / "sample_corpus.jsonl"


def main(weights: list[float]) -> None:
    settings = Settings()
    model_path = resolve_model_path("smollm2-135m-instruct", settings.model_cache_dir)
    dialogues = load_corpus(SAMPLE_CORPUS)
    pairs = [pair for pair in mine_transcripts(dialogue.messages for dialogue in dialogues) if pair.prompt][:120]
    train, held_out = split_pairs(pairs)
    print(f"{len(train)} training pairs, {len(held_out)} held out")
    for weight in weights:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            scores = stage_one_scores(model_path, train, held_out, weight, Path(folder))
        print(f"divergence_weight {weight}: {json.dumps(scores)} ({time.monotonic() - started:.0f} s)", flush=True)


class StopAtStageTwo:
    """Progress callback and stop check that end training at the first stage 2 step."""

    def __init__(self) -> None:
        self.reached = False

    def __call__(self, _: str, metrics: dict[str, object]) -> None:
        self.reached = self.reached or metrics.get("stage") == "APO"

    def should_stop(self) -> bool:
        return self.reached


def stage_one_scores(model_path: str, train: list, held_out: list, weight: float, work: Path) -> dict[str, float]:
    stop = StopAtStageTwo()
    try:
        # Stopping at the first stage 2 step leaves stage 1's adapter in the work folder.
        train_convention_adapter(
            model_path=model_path,
            pairs=train,
            output_dir=work / "adapter",
            settings=TrainingSettings(divergence_weight=weight),
            work_dir=work / "checkpoints",
            on_progress=stop,
            should_stop=stop.should_stop,
        )
    except TrainingCancelledError:
        pass
    return evaluate_versions(
        model_path=model_path, new_adapter=str(work / "checkpoints" / "sft-final"), held_out=held_out
    )["new"]


if __name__ == "__main__":
    main([float(value) for value in sys.argv[1:]] or [1.0, 4.0])
