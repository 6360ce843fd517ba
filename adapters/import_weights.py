"""Checks of an imported adapter's ``adapter_model.safetensors``: every tensor's name, dtype and shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.import_archive import CONFIG_NAME, WEIGHTS_NAME
from adapters.import_errors import AdapterBaseMismatchError, InvalidAdapterWeightsError, UnsupportedAdapterError
from adapters.model_layout import BaseModelLayout

# Key prefix that PEFT's save_pretrained gives every tensor of an adapter.
PEFT_KEY_PREFIX = "base_model.model."
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight)$")
_TOKEN_DELTA_SUFFIX = ".token_adapter.trainable_tokens_delta"
_UNSUPPORTED_TENSOR_KINDS = {
    "lora_B.bias": "a bias on the LoRA B matrix (lora_bias)",
    "lora_embedding_A": "LoRA on an embedding layer",
    "lora_embedding_B": "LoRA on an embedding layer",
    "lora_magnitude_vector": "DoRA (use_dora)",
}


@dataclass(frozen=True)
class TensorInfo:
    """The dtype (safetensors' name, e.g. ``F32``) and shape of one stored tensor."""

    dtype: str
    shape: tuple[int, ...]


def read_tensor_infos(path: Path) -> dict[str, TensorInfo]:
    """Reads the dtype and shape of every tensor from a safetensors file's header, without loading the tensors."""
    from safetensors import SafetensorError, safe_open

    infos: dict[str, TensorInfo] = {}
    try:
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                tensor = weights.get_slice(key)
                infos[key] = TensorInfo(dtype=str(tensor.get_dtype()), shape=tuple(tensor.get_shape()))
    except (SafetensorError, OSError) as error:
        raise InvalidAdapterWeightsError(f"{WEIGHTS_NAME} is not a valid safetensors file: {error}") from error
    if not infos:
        raise InvalidAdapterWeightsError(f"{WEIGHTS_NAME} contains no tensors")
    return infos


def check_tensors(
    tensors: dict[str, TensorInfo],
    lora_config: Any,
    layout: BaseModelLayout,
    targets: set[str],
    token_targets: dict[str, list[int]],
) -> None:
    """Checks every tensor's name, dtype and shape against the targeted base layers and the LoRA rank."""
    found: dict[str, set[str]] = {}
    token_rows_found = False
    for key, info in sorted(tensors.items()):
        if info.dtype not in FLOAT_DTYPES:
            raise InvalidAdapterWeightsError(f"tensor {key!r} has dtype {info.dtype}; adapter weights must be floats")
        module_key = _strip_prefix(key)
        if module_key.endswith(_TOKEN_DELTA_SUFFIX):
            _check_token_delta(key, module_key.removesuffix(_TOKEN_DELTA_SUFFIX), info, layout, token_targets)
            token_rows_found = True
            continue

        match = _LORA_KEY.match(module_key)
        if match is None:
            raise _unexpected_tensor(key, module_key, layout)
        module, kind = match["module"], match["kind"]
        _check_lora_tensor(key, module, kind, info, lora_config, layout, targets)
        found.setdefault(module, set()).add(kind)

    _check_complete(found, targets)
    if token_targets and not token_rows_found:
        raise InvalidAdapterWeightsError(
            f"trainable_token_indices is set in {CONFIG_NAME}, but {WEIGHTS_NAME} has no trainable_tokens_delta"
        )


def _strip_prefix(key: str) -> str:
    if not key.startswith(PEFT_KEY_PREFIX):
        raise AdapterBaseMismatchError(
            f"tensor {key!r} does not start with {PEFT_KEY_PREFIX!r}; save the adapter with PEFT's save_pretrained"
        )
    return key.removeprefix(PEFT_KEY_PREFIX)


def _unexpected_tensor(key: str, module_key: str, layout: BaseModelLayout) -> Exception:
    for kind, description in _UNSUPPORTED_TENSOR_KINDS.items():
        if f".{kind}" in module_key:
            return UnsupportedAdapterError(f"tensor {key!r} belongs to {description}, which is not supported")
    parts = module_key.split(".")
    if any(".".join(parts[:end]) in layout.modules for end in range(len(parts), 0, -1)):
        return UnsupportedAdapterError(
            f"tensor {key!r} is a full layer weight, not a LoRA matrix; save the adapter without modules_to_save "
            "and with save_embedding_layers=False"
        )
    return AdapterBaseMismatchError(
        f"tensor {key!r} does not map to a module of the base model; the adapter was trained for another model"
    )


def _check_lora_tensor(
    key: str, module: str, kind: str, info: TensorInfo, lora_config: Any, layout: BaseModelLayout, targets: set[str]
) -> None:
    from peft.utils.other import get_pattern_key

    base = layout.modules.get(module)
    if base is None:
        raise AdapterBaseMismatchError(
            f"tensor {key!r} is for module {module!r}, which does not exist in the base model; the adapter was "
            "trained for another model"
        )
    if module not in targets:
        raise AdapterBaseMismatchError(
            f"tensor {key!r} is for module {module!r}, which target_modules in {CONFIG_NAME} does not select"
        )

    rank = lora_config.rank_pattern.get(get_pattern_key(lora_config.rank_pattern.keys(), module), lora_config.r)
    expected = {
        "lora_A.weight": (rank, base.in_features),
        "lora_B.weight": (base.out_features, rank),
    }[kind]
    if info.shape == expected:
        return
    if rank not in info.shape:
        raise InvalidAdapterWeightsError(
            f"tensor {key!r} has shape {list(info.shape)}, which does not have the rank {rank} that "
            f"{CONFIG_NAME} sets for {module!r}"
        )
    raise AdapterBaseMismatchError(
        f"tensor {key!r} has shape {list(info.shape)}, but the base model's {module!r} needs {list(expected)} "
        f"(in_features {base.in_features}, out_features {base.out_features}); the adapter was trained for a "
        "differently sized model"
    )


def _check_token_delta(
    key: str, module: str, info: TensorInfo, layout: BaseModelLayout, token_targets: dict[str, list[int]]
) -> None:
    if module not in token_targets:
        raise AdapterBaseMismatchError(
            f"tensor {key!r} trains token rows of {module!r}, which trainable_token_indices in {CONFIG_NAME} "
            "does not select"
        )
    width = layout.modules[module].token_row_width
    expected = (len(token_targets[module]), width)
    if info.shape != expected:
        raise AdapterBaseMismatchError(
            f"tensor {key!r} has shape {list(info.shape)}, but the base model's embedding needs {list(expected)} "
            f"(embedding width {width})"
        )


def _check_complete(found: dict[str, set[str]], targets: set[str]) -> None:
    required = {"lora_A.weight", "lora_B.weight"}
    incomplete = sorted(module for module in targets if found.get(module, set()) != required)
    if incomplete:
        raise AdapterBaseMismatchError(
            f"{WEIGHTS_NAME} lacks LoRA weights ({', '.join(sorted(required))}) for {len(incomplete)} of the "
            f"{len(targets)} modules that target_modules selects, first {incomplete[0]!r}; either target_modules "
            "does not describe the saved weights or the adapter was trained for a model with other layers"
        )
