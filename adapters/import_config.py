"""Checks of an imported adapter's ``adapter_config.json``: a plain PEFT LoRA whose targets exist in the base model."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from typing import Any

from adapters.import_archive import CONFIG_NAME
from adapters.import_errors import (
    AdapterBaseMismatchError,
    AdapterRankTooLargeError,
    InvalidAdapterConfigError,
    UnsupportedAdapterError,
)
from adapters.model_layout import BaseModelLayout

# Task types that the engine serves: PEFT wraps other task types with extra heads.
TASK_TYPES = (None, "CAUSAL_LM")
# Initialisations that only set the LoRA matrices, which the saved weights then overwrite. The others (PiSSA,
# OLoRA, CorDA, LoftQ, ...) read or rewrite the base layer's weights when the adapter is loaded.
SAFE_INITS: tuple[bool | str, ...] = (True, False, "gaussian")
# Config fields whose JSON type is checked before PEFT reads them, with the types they may have.
CHECKED_FIELD_TYPES = {
    "exclude_modules": "a module name, a list of names or null",
    "layers_to_transform": "a layer index, a list of indices or null",
    "layers_pattern": "a name, a list of names or null",
    "rank_pattern": "an object of module patterns to ranks",
    "alpha_pattern": "an object of module patterns to numbers",
    "trainable_token_indices": "a list of token ids, an object of module names to lists of ids, or null",
}
# LoRA variants and options that add tensors or change the forward pass beyond plain B(A(x)) on linear layers.
# PEFT 0.21 or adapters.multilora cannot load them as plain LoRA, so an accepted adapter loads with either.
UNSUPPORTED_OPTIONS = {
    "lora_bias": "a bias on the LoRA B matrix (lora_bias)",
    "fan_in_fan_out": "transposed Conv1D weights (fan_in_fan_out)",
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QALoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "megatron_config": "Megatron layers (megatron_config)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on parameters (target_parameters)",
}


def parse_adapter_config(content: bytes, *, max_rank: int) -> dict[str, Any]:
    """Parses ``adapter_config.json`` and checks the fields that decide whether it is a plain LoRA."""
    try:
        config = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        message = f"{CONFIG_NAME} is not valid JSON ({error}); upload the file that PEFT wrote"
        raise InvalidAdapterConfigError(message) from error
    if not isinstance(config, dict):
        raise InvalidAdapterConfigError(f"{CONFIG_NAME} must contain a JSON object, not {type(config).__name__}")

    peft_type = config.get("peft_type")
    if peft_type is None:
        raise InvalidAdapterConfigError(f"{CONFIG_NAME} has no peft_type; only PEFT LoRA adapters can be imported")
    if peft_type != "LORA":
        raise UnsupportedAdapterError(f"peft_type is {peft_type!r}; only LORA adapters can be imported")
    _check_options(config)
    _check_field_types(config)
    _check_ranks(config, max_rank=max_rank)
    _check_target_modules_field(config.get("target_modules"))
    return config


def _check_options(config: dict[str, Any]) -> None:
    for field, description in UNSUPPORTED_OPTIONS.items():
        if config.get(field):
            raise UnsupportedAdapterError(f"{description} is not supported; import a plain LoRA adapter")
    if config.get("modules_to_save"):
        raise UnsupportedAdapterError(
            f"modules_to_save {config['modules_to_save']!r} saves full copies of layers, which are not accepted; "
            "train the adapter without modules_to_save"
        )
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapterError(
            f"bias {config['bias']!r} saves biases of the base model, which are not accepted; set bias to 'none'"
        )
    if config.get("task_type") not in TASK_TYPES:
        raise UnsupportedAdapterError(
            f"task_type {config['task_type']!r} is not served; only CAUSAL_LM adapters (or none) can be imported"
        )
    init = config.get("init_lora_weights", True)
    if not any(init is safe if isinstance(safe, bool) else init == safe for safe in SAFE_INITS):
        raise UnsupportedAdapterError(
            f"init_lora_weights {init!r} changes or depends on the base model's weights when the adapter loads; "
            "convert it to a plain LoRA (PEFT's save_pretrained with path_initial_model_for_weight_conversion) "
            "or set init_lora_weights to true"
        )


def _check_field_types(config: dict[str, Any]) -> None:
    for field, expected in CHECKED_FIELD_TYPES.items():
        value = config.get(field)
        if value is not None and not _has_valid_type(field, value):
            raise InvalidAdapterConfigError(f"{field} in {CONFIG_NAME} must be {expected}, not {value!r}")


def _has_valid_type(field: str, value: Any) -> bool:
    if field in ("exclude_modules", "layers_pattern"):
        return isinstance(value, str) or _is_list_of(value, str)
    if field == "layers_to_transform":
        return _is_int(value) or _is_list_of(value, int)
    if field in ("rank_pattern", "alpha_pattern"):
        numbers = value.values() if isinstance(value, dict) else [None]
        return all(_is_int(number) or isinstance(number, float) for number in numbers)
    # trainable_token_indices
    if isinstance(value, dict):
        return all(isinstance(name, str) and _is_list_of(ids, int) for name, ids in value.items())
    return _is_list_of(value, int)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list_of(value: Any, item_type: type) -> bool:
    if not isinstance(value, list):
        return False
    if item_type is int:
        return all(_is_int(item) for item in value)
    return all(isinstance(item, item_type) for item in value)


def _check_ranks(config: dict[str, Any], *, max_rank: int) -> None:
    rank = config.get("r")
    if not _is_int(rank) or rank < 1:
        raise InvalidAdapterConfigError(f"r in {CONFIG_NAME} must be a positive integer, not {rank!r}")
    rank_pattern = config.get("rank_pattern") or {}
    if not all(_is_int(value) and value >= 1 for value in rank_pattern.values()):
        raise InvalidAdapterConfigError(f"rank_pattern in {CONFIG_NAME} must map module names to positive integers")

    largest = max([rank, *rank_pattern.values()])
    if largest > max_rank:
        raise AdapterRankTooLargeError(
            f"the adapter's LoRA rank {largest} is above the limit of {max_rank}; retrain it with r <= {max_rank} "
            "or raise max_adapter_rank"
        )


def _check_target_modules_field(targets: Any) -> None:
    valid_list = isinstance(targets, list) and targets and all(isinstance(name, str) and name for name in targets)
    if not (isinstance(targets, str) and targets) and not valid_list:
        raise InvalidAdapterConfigError(
            f"target_modules in {CONFIG_NAME} must be a non-empty list of module names or a regular expression, "
            f"not {targets!r}"
        )


def peft_config(raw: dict[str, Any]) -> Any:
    """Builds PEFT's LoraConfig, which runs the same consistency checks as loading the adapter does."""
    from peft import LoraConfig

    # PEFT drops runtime_config when it reads a config file, and so does this check.
    fields = {name: value for name, value in raw.items() if name != "runtime_config"}
    try:
        config = LoraConfig.from_peft_type(**fields)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise InvalidAdapterConfigError(f"{CONFIG_NAME} is not a valid LoRA config: {error}") from error
    config.rank_pattern = config.rank_pattern or {}
    return config


def select_target_modules(lora_config: Any, layout: BaseModelLayout) -> set[str]:
    """Returns the names of the base model's modules that the config's target_modules select, as PEFT does.

    Raises when a listed target matches no module, or when a selected module is not a linear layer.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    config = copy.copy(lora_config)
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == "all-linear":
        linear = {name for name, module in layout.modules.items() if module.kind == "linear"}
        config.target_modules = linear - {layout.output_embedding}
    elif isinstance(targets, str):
        _check_pattern(targets, layout)
    else:
        _check_listed_targets(targets, layout)

    selected = {name for name in layout.modules if check_target_module_exists(config, name)}
    if not selected:
        raise AdapterBaseMismatchError(
            f"target_modules {configured_targets(targets)} select no module of the base model; check "
            "layers_to_transform and exclude_modules"
        )
    for name in sorted(selected):
        kind = layout.modules[name].kind
        if name == layout.output_embedding:
            raise UnsupportedAdapterError(
                f"target module {name!r} is the output layer; LoRA on it is not accepted, only on the other linear "
                "layers (train the planning token with trainable_token_indices instead)"
            )
        if kind == "embedding":
            raise UnsupportedAdapterError(
                f"target module {name!r} is an embedding layer; LoRA on embeddings is not accepted, only on linear "
                "layers (train the planning token with trainable_token_indices instead)"
            )
        if kind != "linear":
            raise AdapterBaseMismatchError(
                f"target module {name!r} is a {layout.modules[name].type_name}, not a linear layer; LoRA can only "
                "target linear layers"
            )
    return selected


def _check_pattern(pattern: str, layout: BaseModelLayout) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        message = f"target_modules {pattern!r} is not a valid regular expression: {error}"
        raise InvalidAdapterConfigError(message) from error
    if not any(compiled.fullmatch(name) for name in layout.modules):
        raise AdapterBaseMismatchError(f"target_modules pattern {pattern!r} matches no module of the base model")


def _check_listed_targets(targets: Iterable[str], layout: BaseModelLayout) -> None:
    for target in sorted(targets):
        if not any(name == target or name.endswith(f".{target}") for name in layout.modules):
            examples = ", ".join(layout.linear_suffixes()[:12])
            raise AdapterBaseMismatchError(
                f"target module {target!r} does not exist in the base model; its linear layers are named {examples}"
            )


def select_token_targets(lora_config: Any, layout: BaseModelLayout) -> dict[str, list[int]]:
    """Returns the embedding modules whose rows the adapter trains, by name, with their token ids.

    Only the planning token's row is accepted, because the served model adds that token to the base vocabulary.
    An output layer tied to the input embedding shares its rows, so only an untied one may have rows of its own.
    """
    indices = lora_config.trainable_token_indices
    if not indices:
        return {}
    if layout.input_embedding is None:
        raise AdapterBaseMismatchError("the base model has no input embedding, so trainable_token_indices cannot apply")

    requested = indices if isinstance(indices, dict) else {layout.input_embedding: indices}
    embeddings = [layout.input_embedding]
    if layout.output_embedding is not None and not layout.tied_embeddings:
        embeddings.append(layout.output_embedding)
    selected: dict[str, list[int]] = {}
    for target, token_ids in requested.items():
        module = next((name for name in embeddings if name == target or name.endswith(f".{target}")), None)
        if module is None:
            raise UnsupportedAdapterError(
                f"trainable_token_indices targets {target!r}; only {' or '.join(embeddings)} may have trained "
                "token rows"
            )
        if token_ids != [layout.planning_token_id]:
            raise AdapterBaseMismatchError(
                f"trainable_token_indices {token_ids!r} of {target!r} is not accepted; only the planning token "
                f"may have a trained row, so set it to [{layout.planning_token_id}]"
            )
        selected[module] = token_ids
    return selected


def configured_targets(targets: Any) -> list[str]:
    """Returns target_modules as a sorted list, or a regular expression as a list of one item."""
    return [targets] if isinstance(targets, str) else sorted(targets)
