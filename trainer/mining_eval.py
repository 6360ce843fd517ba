"""Measure the precision and recall of ``find_rementions`` on a hand-labelled sample of dialogues.

Each line of the sample is one dialogue with labels of the form
``{"first", "later", "later_message_index", "correct"}``. A predicted re-mention is a true positive when
a label with ``correct`` true has the same first mention text, later mention text and later message
index. Labels with ``correct`` true that no prediction matches are counted as misses, which gives a
recall estimate over the re-mentions that the labeller found.

Usage: ``python -m trainer.mining_eval [--sample PATH] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer.mining import find_rementions

DEFAULT_SAMPLE = Path(__file__).parent / "data" / "mining_sample.jsonl"

PairKey = tuple[str, str, int]
"""A re-mention's first mention text, later mention text and later message index."""


@dataclass
class Dialogue:
    id: str
    messages: list[dict[str, str]]
    labels: dict[PairKey, bool]


@dataclass(frozen=True)
class PairRef:
    """A (first mention, later mention) pair in one dialogue, as listed in the report."""

    dialogue_id: str
    first: str
    later: str
    later_message_index: int


@dataclass
class Evaluation:
    dialogues: int = 0
    predicted: int = 0
    true_positives: int = 0
    false_positives: list[PairRef] = field(default_factory=list)
    unlabelled: list[PairRef] = field(default_factory=list)
    labelled_true: int = 0
    misses: list[PairRef] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """Precision over the labelled predictions, so unlabelled predictions are left out."""
        judged = self.true_positives + len(self.false_positives)
        return self.true_positives / judged if judged else math.nan

    @property
    def recall(self) -> float:
        """Recall over the true re-mentions that the labeller found, which is an estimate.

        Labels are distinct (first, later, message index) keys, so a later mention that occurs twice in one
        message counts once here but twice in ``true_positives``.
        """
        return (self.labelled_true - len(self.misses)) / self.labelled_true if self.labelled_true else math.nan


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Return the Wilson score interval for a binomial proportion, 95% for the default ``z``."""
    if trials <= 0:
        return (math.nan, math.nan)
    proportion = successes / trials
    denominator = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half_width), min(1.0, centre + half_width))


def parse_dialogue(record: dict[str, Any]) -> Dialogue:
    """Build a dialogue from one sample line, and raise ValueError on contradictory labels."""
    labels: dict[PairKey, bool] = {}
    for label in record["labels"]:
        key = (label["first"], label["later"], int(label["later_message_index"]))
        correct = bool(label["correct"])
        if labels.get(key, correct) != correct:
            raise ValueError(f"dialogue {record['id']}: contradictory labels for {key}, keep only the correct one")
        labels[key] = correct
    return Dialogue(str(record["id"]), list(record["messages"]), labels)


def load_sample(path: Path) -> list[Dialogue]:
    with path.open(encoding="utf-8") as sample:
        return [parse_dialogue(json.loads(line)) for line in sample if line.strip()]


def predicted_keys(messages: Sequence[dict[str, str]]) -> list[PairKey]:
    return [
        (remention.first.text, remention.later.text, remention.later.message_index)
        for remention in find_rementions(messages)
    ]


def score_dialogue(evaluation: Evaluation, dialogue: Dialogue, predictions: Iterable[PairKey]) -> None:
    """Add one dialogue's predictions to ``evaluation``, counting each prediction once."""
    evaluation.dialogues += 1
    found: set[PairKey] = set()
    for key in predictions:
        evaluation.predicted += 1
        found.add(key)
        ref = PairRef(dialogue.id, *key)
        if key not in dialogue.labels:
            evaluation.unlabelled.append(ref)
        elif dialogue.labels[key]:
            evaluation.true_positives += 1
        else:
            evaluation.false_positives.append(ref)
    for key, correct in dialogue.labels.items():
        if correct:
            evaluation.labelled_true += 1
            if key not in found:
                evaluation.misses.append(PairRef(dialogue.id, *key))


def evaluate(dialogues: Sequence[Dialogue], progress: bool = True) -> Evaluation:
    evaluation = Evaluation()
    for dialogue in tqdm(dialogues, desc="dialogues", unit="dialogue", disable=not progress):
        score_dialogue(evaluation, dialogue, predicted_keys(dialogue.messages))
    return evaluation


def _format_pairs(title: str, pairs: Sequence[PairRef]) -> list[str]:
    lines = [f"{title} ({len(pairs)}):"]
    lines += [
        f"  [{pair.dialogue_id}] {pair.first!r} -> {pair.later!r} (message {pair.later_message_index})"
        for pair in pairs
    ]
    return lines


def format_report(evaluation: Evaluation) -> str:
    judged = evaluation.true_positives + len(evaluation.false_positives)
    low, high = wilson_interval(evaluation.true_positives, judged)
    found = evaluation.labelled_true - len(evaluation.misses)
    lines = [
        f"dialogues:             {evaluation.dialogues}",
        f"predicted candidates:  {evaluation.predicted}",
        f"true positives:        {evaluation.true_positives}",
        f"false positives:       {len(evaluation.false_positives)}",
        f"unlabelled:            {len(evaluation.unlabelled)}",
        f"precision:             {evaluation.precision:.3f} (95% Wilson interval {low:.3f}..{high:.3f}, n={judged})",
        f"labelled true:         {evaluation.labelled_true}",
        f"missed:                {len(evaluation.misses)}",
        f"recall estimate:       {evaluation.recall:.3f} ({found}/{evaluation.labelled_true})",
    ]
    lines += _format_pairs("false positives", evaluation.false_positives)
    lines += _format_pairs("misses", evaluation.misses)
    if evaluation.unlabelled:
        lines += _format_pairs("unlabelled predictions, to be labelled by reading the dialogue", evaluation.unlabelled)
    return "\n".join(lines)


def report_json(evaluation: Evaluation) -> dict[str, Any]:
    judged = evaluation.true_positives + len(evaluation.false_positives)
    low, high = wilson_interval(evaluation.true_positives, judged)
    return {
        "dialogues": evaluation.dialogues,
        "predicted": evaluation.predicted,
        "true_positives": evaluation.true_positives,
        "false_positives": [asdict(pair) for pair in evaluation.false_positives],
        "unlabelled": [asdict(pair) for pair in evaluation.unlabelled],
        "precision": evaluation.precision,
        "precision_wilson_95": [low, high],
        "labelled_true": evaluation.labelled_true,
        "misses": [asdict(pair) for pair in evaluation.misses],
        "recall_estimate": evaluation.recall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure find_rementions on a labelled sample of dialogues.")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="labelled JSONL sample")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    evaluation = evaluate(load_sample(args.sample))
    print(format_report(evaluation))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(evaluation), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
