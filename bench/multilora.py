"""Decoding throughput of a batch whose rows use different LoRA adapters, on the default model.

The adapters are random, with the shape of the trainer's: rank 16 and alpha 32 on the q, k, v and o projections,
plus a trained planning token row. For 1, 8 and 32 loaded adapters, 8 chat prompts each get 32 new greedy tokens
on a KV cache, in four ways:

    multilora   one left-padded batch, each row with its own adapter, through MultiLoraModel
    base        the same batch on the bare base model, without adapters
    switching   peft, one sequence at a time, with set_adapter before each
    peft-mixed  peft's own mixed batch (the adapter_names argument of its forward)

With 32 adapters loaded, the 8 rows use 8 distinct ones of them. Every method generates all 32 tokens (no
end-of-sequence stop), so each does the same work. Each figure is the median over the repeats. The two peft
methods are several times slower, so by default they run once per adapter count, while the two batched methods,
whose ratio is close to 1, run three times (once with 32 adapters).

    .venv/bin/python -m bench.multilora --threads 1

On a machine where other processes compete for the cores, pass ``--threads 1``: torch's worker threads wait
by spinning. On a 2-core machine with two other busy processes, one decoding step of this model took 1.3 s
with 2 threads and 61 ms with 1. There the whole run took 6.6 minutes, of which 5.3 were CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapters.base_model import load_model_and_tokenizer, resolve_model_path
from adapters.multilora import WEIGHTS_FILE, MultiLoraModel
from adapters.planning import PLANNING_TOKEN

MODEL_NAME = "smollm2-135m-instruct"
MODEL_CACHE = Path.home() / ".cache" / "convention-gateway" / "models"
RANK = 16
ALPHA = 32
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = [
    "Pass me the blue mug on the left shelf, please.",
    "Which of the three cards shows the tall thin figure with raised arms?",
    "Hi!",
    "Remember the one that looked like a skater? Point to it again.",
    "Describe the picture in the top row that we called the lighthouse last time, and say how it differs.",
    "Ok, next one.",
    "Can you pick the figure that resembles a rabbit sitting down?",
    "The dancer again, the same as before.",
]

# A decoding method: (prompts, adapter of each row, new tokens per prompt) -> generated token ids.
Generate = Callable[[list[list[int]], list[str | None], int], torch.Tensor]


def save_random_adapters(model_path: str, folder: Path, count: int) -> list[Path]:
    """Saves ``count`` adapters with random weights, all in the layout of one adapter saved by peft."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model_and_tokenizer(model_path)
    planning_id = int(tokenizer.convert_tokens_to_ids(PLANNING_TOKEN))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES, trainable_token_indices=[planning_id])
    template = folder / "template"
    get_peft_model(model, config).save_pretrained(template, save_embedding_layers=False)
    tensors = load_file(template / WEIGHTS_FILE)
    config_text = (template / "adapter_config.json").read_text()

    folders = []
    for index in range(count):
        torch.manual_seed(index)
        adapter = folder / f"adapter-{index:02d}"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(config_text)
        save_file({key: random_like(key, value) for key, value in tensors.items()}, adapter / WEIGHTS_FILE)
        folders.append(adapter)
    return folders


def random_like(key: str, value: torch.Tensor) -> torch.Tensor:
    """Returns random weights of ``value``'s shape, scaled so that the adapter shifts the outputs moderately."""
    if key.endswith("trainable_tokens_delta"):
        return value + 0.02 * torch.randn_like(value)
    if ".lora_A." in key:
        return torch.randn_like(value) / value.shape[1] ** 0.5
    return 0.01 * torch.randn_like(value)


def greedy_batch(model: Any, prompts: list[list[int]], pad_id: int, new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """Returns ``new_tokens`` greedy token ids per prompt, decoding the left-padded batch on a KV cache."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(prompt)) + prompt for prompt in prompts])
    attention_mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts])
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = None
    generated = []

    for _ in range(new_tokens):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        cache = output.cache
        input_ids = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        generated.append(input_ids)
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)
    return torch.cat(generated, dim=1)


def timed(
    methods: dict[str, Generate],
    prompts: list[list[int]],
    rows: list[str | None],
    new_tokens: int,
    repeats: dict[str, int],
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Returns each method's median tokens/s over its ``repeats`` runs, and its last run's tokens.

    The methods take turns within each round, so that load from other processes spreads over all of them. A
    two-token warm-up run first lets each method do its one-time set-up work outside the timing.
    """
    for generate in methods.values():
        generate(prompts, rows, 2)
    rates: dict[str, list[float]] = {method: [] for method in methods}
    tokens: dict[str, torch.Tensor] = {}
    for round_index in range(max(repeats.values())):
        for method, generate in methods.items():
            if round_index >= repeats[method]:
                continue
            started = time.perf_counter()
            tokens[method] = generate(prompts, rows, new_tokens)
            rates[method].append(tokens[method].numel() / (time.perf_counter() - started))
    return {method: statistics.median(values) for method, values in rates.items()}, tokens


def row_adapters(names: list[str], rows: int) -> list[str | None]:
    """Spreads ``rows`` batch rows over the loaded adapters, as many distinct ones as possible."""
    step = max(1, len(names) // rows)
    return [names[(row * step) % len(names)] for row in range(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of multilora and base, up to 8 adapters")
    parser.add_argument("--peft-repeats", type=int, default=1, help="timed runs of the peft methods, up to 8 adapters")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed runs per method for more than 8 adapters")
    parser.add_argument("--adapter-counts", default="1,8,32", help="comma-separated numbers of loaded adapters")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 keeps torch's default)")
    args = parser.parse_args()
    counts = [int(count) for count in args.adapter_counts.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    model_path = resolve_model_path(MODEL_NAME, MODEL_CACHE)
    print(f"model {MODEL_NAME}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"{len(PROMPTS)} prompts x {args.new_tokens} new greedy tokens; tokens/s are medians over the repeats\n")

    with tempfile.TemporaryDirectory(prefix="bench-multilora-") as tmp:
        folders = save_random_adapters(model_path, Path(tmp), max(counts))
        bench = Bench(model_path)
        results = []
        for count in counts:
            batched, peft = (args.repeats, args.peft_repeats) if count <= 8 else (args.large_repeats,) * 2
            repeats = {"multilora": batched, "base": batched, "switching": peft, "peft-mixed": peft}
            results.append(bench.run(folders[:count], args.new_tokens, repeats))
    print(json.dumps(results, indent=2))


class Bench:
    """The four decoding methods, each on its own copy of the base model."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.base, tokenizer = load_model_and_tokenizer(model_path)
        self.pad_id = int(tokenizer.pad_token_id)
        self.prompts = [chat_prompt_ids(tokenizer, text) for text in PROMPTS]
        self.multi = MultiLoraModel(load_model_and_tokenizer(model_path)[0])
        # peft builds its model around a first adapter, so it is created by the first load.
        self.peft_model: Any = None

    def load(self, folders: list[Path]) -> list[str]:
        """Loads the adapters of ``folders`` that are not loaded yet, into MultiLoraModel and into peft."""
        from peft import PeftModel

        names = [f"a{index:02d}" for index in range(len(folders))]
        for name, folder in zip(names, folders, strict=True):
            if name not in self.multi.loaded_adapters:
                self.multi.load_adapter(name, folder)
            if self.peft_model is None:
                base = load_model_and_tokenizer(self.model_path)[0]
                self.peft_model = PeftModel.from_pretrained(base, str(folder), adapter_name=name).eval()
            elif name not in self.peft_model.peft_config:
                self.peft_model.load_adapter(str(folder), adapter_name=name)
        return names

    def run(self, folders: list[Path], new_tokens: int, repeats: dict[str, int]) -> dict[str, Any]:
        names = self.load(folders)
        rows = row_adapters(names, len(self.prompts))
        methods: dict[str, Generate] = {
            "multilora": self.generate_multilora,
            "base": self.generate_base,
            "switching": self.generate_switching,
            "peft-mixed": self.generate_peft_mixed,
        }
        started = time.perf_counter()
        rates, tokens = timed(methods, self.prompts, rows, new_tokens, repeats)
        return report(len(names), rows, repeats, rates, tokens, time.perf_counter() - started)

    def generate_multilora(self, prompts: list[list[int]], rows: list[str | None], new_tokens: int) -> torch.Tensor:
        with self.multi.rows_using(rows):
            return greedy_batch(self.multi, prompts, self.pad_id, new_tokens)

    def generate_base(self, prompts: list[list[int]], rows: list[str | None], new_tokens: int) -> torch.Tensor:
        return greedy_batch(self.base, prompts, self.pad_id, new_tokens)

    def generate_switching(self, prompts: list[list[int]], rows: list[str | None], new_tokens: int) -> torch.Tensor:
        outputs = []
        for prompt, name in zip(prompts, rows, strict=True):
            self.peft_model.set_adapter(name)
            outputs.append(greedy_batch(self.peft_model, [prompt], self.pad_id, new_tokens))
        return torch.cat(outputs)

    def generate_peft_mixed(self, prompts: list[list[int]], rows: list[str | None], new_tokens: int) -> torch.Tensor:
        return greedy_batch(self.peft_model, prompts, self.pad_id, new_tokens, adapter_names=rows)


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    return [int(token) for token in ids]


def report(
    count: int,
    rows: list[str | None],
    repeats: dict[str, int],
    rates: dict[str, float],
    tokens: dict[str, torch.Tensor],
    seconds: float,
) -> dict[str, Any]:
    """Prints one adapter count's results and returns them for the closing JSON record."""
    distinct = len(set(rows))
    print(f"{count} adapters loaded, {distinct} distinct in the batch ({seconds:.0f} s)")
    for method, rate in rates.items():
        print(f"  {method:<11} {rate:8.1f} tokens/s (median of {repeats[method]})")
    ratios = {
        "multilora_vs_switching": rates["multilora"] / rates["switching"],
        "multilora_vs_base": rates["multilora"] / rates["base"],
        "multilora_vs_peft_mixed": rates["multilora"] / rates["peft-mixed"],
    }
    for name, ratio in ratios.items():
        print(f"  {name:<24} {ratio:.2f}x")

    # Left padding changes the rounding of the batched methods, so a close greedy choice may flip.
    same = {
        method: sum(torch.equal(ours, theirs) for ours, theirs in zip(tokens["multilora"], tokens[method], strict=True))
        for method in ("switching", "peft-mixed")
    }
    print(f"  rows with the same tokens: {same['switching']}/{len(rows)} as switching, ", end="")
    print(f"{same['peft-mixed']}/{len(rows)} as peft-mixed\n")
    return {
        "adapters": count,
        "distinct_in_batch": distinct,
        "repeats": repeats,
        "tokens_per_s": {method: round(rate, 1) for method, rate in rates.items()},
        **{name: round(ratio, 2) for name, ratio in ratios.items()},
        "rows_same_tokens": same,
    }


if __name__ == "__main__":
    main()
