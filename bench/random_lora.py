"""Random LoRA adapters for the default model, written in peft's folder format, and their registration.

The weights follow peft's ``init_lora_weights=False``, which leaves A and B at ``nn.Linear``'s default
initialisation (uniform within 1/sqrt(fan_in)), with B scaled down so that the adapted model's replies change
but stay fluent.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import torch
from safetensors.torch import save_file

from adapters.keys import Keys
from adapters.multilora import WEIGHTS_FILE
from adapters.registry import AdapterRegistry, AdapterVersion, adapter_folder

RANK = 16
ALPHA = 32
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
# With B at full scale the adapted model's replies end at once with end-of-text. At 0.2 to 0.5 they differ from
# the base model's replies and stay fluent (checked by eye on the default model, one greedy prompt).
B_SCALE = 0.3


class RandomAdapterWriter:
    """Writes adapters with fresh random weights, all with the key names and shapes of one peft adapter."""

    def __init__(self, model_path: str) -> None:
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        self.config = LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            target_modules=TARGET_MODULES,
            init_lora_weights=False,
            base_model_name_or_path=model_path,
        )
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), self.config)
        self.shapes = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(peft_model).items()}
        self._seeds = itertools.count(1)

    def write(self, folder: Path) -> Path:
        """Writes one adapter with new random weights into ``folder`` and returns it."""
        generator = torch.Generator().manual_seed(next(self._seeds))
        tensors = {}
        for key, shape in self.shapes.items():
            bound = 1 / shape[1] ** 0.5
            weights = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            tensors[key] = weights * B_SCALE if ".lora_B." in key else weights

        folder.mkdir(parents=True)
        self.config.save_pretrained(str(folder))
        save_file(tensors, folder / WEIGHTS_FILE)
        return folder


@dataclass(frozen=True)
class Swap:
    """One adapter version registered and activated during a load run, at ``time.perf_counter()`` time."""

    partner: str
    version: int
    registered_at: float


class AdapterPublisher:
    """Registers adapters in Redis as each partner's next active version, as a finished training job does."""

    def __init__(self, client: redis.Redis, prefix: str, artifact_dir: Path, base_model: str) -> None:
        self.registry = AdapterRegistry(client, Keys(prefix))
        self.artifact_dir = artifact_dir
        self.base_model = base_model
        self.active: dict[str, int] = {}

    def publish(self, partner: str, staged: Path) -> Swap:
        """Moves a written adapter folder to the next version's folder, registers it and makes it active."""
        version = self.registry.allocate_version(partner)
        folder = adapter_folder(self.artifact_dir, partner, version)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(folder)
        adapter = AdapterVersion(
            partner_id=partner,
            version=version,
            base_model=self.base_model,
            path=str(folder),
            created_at=int(time.time()),
        )
        self.registry.register(adapter, activate=True)
        self.active[partner] = version
        return Swap(partner=partner, version=version, registered_at=time.perf_counter())
