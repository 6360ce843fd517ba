"""Many LoRA adapters applied in one batched forward pass, each batch row with its own adapter or none.

``MultiLoraModel`` replaces every ``nn.Linear`` that a loaded adapter targets with a ``LoraLinear``, which keeps
the original layer and a table of the adapters' A and B matrices. Before a forward pass the caller names one
adapter per batch row (None for the bare base model) with ``rows_using``. Each wrapped layer then adds
``scale * B(A(x))`` to the rows of every distinct adapter in the batch, so a batch that mixes partners costs one
forward pass, not one per adapter. peft is not used at inference: adapters are read from peft's saved folder
format (``adapter_config.json`` and ``adapter_model.safetensors``).

Trainable token rows (peft's ``trainable_token_indices``, used for the planning token) replace the embedding
vector of those token ids in the rows of their adapter. With tied embeddings the same rows replace the output
layer's rows, so the logits of those token ids are recomputed per batch row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

__all__ = [
    "AdapterInUseError",
    "AdapterLoadError",
    "AdapterNotLoadedError",
    "BatchSelection",
    "LoraLinear",
    "LoraWeights",
    "MultiLoraModel",
    "TokenRows",
    "TokenRowsEmbedding",
    "TokenRowsHead",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# peft saves keys without the adapter name, but a PeftModel's own state dict includes it (``lora_A.default.weight``).
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_TOKEN_ROWS_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.token_adapter\.trainable_tokens_delta(?:\.(?P<adapter>[^.]+))?$"
)

# LoraConfig fields of peft 0.21 (the version pyproject.toml allows) that switch on a LoRA variant whose forward
# pass is not plain B(A(x)), or that add weights or modules beyond the A and B matrices of linear layers. A newer
# peft may add variants, so review this table when raising the peft version.
_UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "BD-LoRA",
    "velora_config": "VeLoRA",
    "use_qalora": "QA-LoRA",
    "lora_bias": "LoRA bias vectors",
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
    "modules_to_save": "modules_to_save (fully trained copies of modules)",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (LoRA on nn.Parameter)",
    "megatron_config": "Megatron parallel layers",
}


class AdapterLoadError(ValueError):
    """An adapter folder is missing, unreadable, or contains something this module cannot apply exactly."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"failed to load adapter from {path}: {reason}")
        self.path = path


class AdapterNotLoadedError(LookupError):
    """An adapter name that ``rows_using`` or ``unload_adapter`` received is not loaded."""


class AdapterInUseError(RuntimeError):
    """``unload_adapter`` was called while a ``rows_using`` block selects that adapter."""


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's low-rank update of one linear layer: ``scale * (x @ a.T) @ b.T``."""

    a: torch.Tensor  # [rank, in_features]
    b: torch.Tensor  # [out_features, rank]
    scale: float

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        # Same order of operations as peft's lora.Linear, so the results agree to rounding.
        return F.linear(F.linear(x, self.a), self.b) * self.scale


@dataclass(frozen=True)
class TokenRows:
    """An adapter's replacement rows of the embedding matrix for a few token ids."""

    token_ids: torch.Tensor  # [k], int64
    rows: torch.Tensor  # [k, hidden_size]

    def replace_embeddings(self, input_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Returns ``embeddings`` with the vector replaced at every position whose id is one of ``token_ids``."""
        matches = input_ids.unsqueeze(-1) == self.token_ids
        found = matches.any(dim=-1, keepdim=True)
        which = matches.int().argmax(dim=-1)
        return torch.where(found, self.rows[which], embeddings)


@dataclass(frozen=True)
class BatchSelection:
    """The adapter of each batch row, grouped by adapter in order of first appearance."""

    batch_size: int
    # Each group is an adapter name and its row indices. Row indices None mean every row of the batch.
    groups: tuple[tuple[str, torch.Tensor | None], ...]

    @classmethod
    def build(cls, adapter_names: Sequence[str | None], device: torch.device) -> BatchSelection:
        rows_by_name: dict[str, list[int]] = {}
        for row, name in enumerate(adapter_names):
            if name is not None:
                rows_by_name.setdefault(name, []).append(row)

        groups: list[tuple[str, torch.Tensor | None]] = []
        for name, rows in rows_by_name.items():
            if len(rows) == len(adapter_names):
                groups.append((name, None))
            else:
                groups.append((name, torch.tensor(rows, dtype=torch.long, device=device)))
        return cls(batch_size=len(adapter_names), groups=tuple(groups))

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.groups}

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(
                f"the forward pass has {batch_size} batch rows, but rows_using named adapters for "
                f"{self.batch_size} rows; pass one adapter name (or None) per batch row"
            )


class _SelectionSlot:
    """The selection of the running forward pass, shared by all wrapped layers of one model."""

    def __init__(self) -> None:
        self.current: BatchSelection | None = None


class _AdapterTableLayer(nn.Module):
    """A wrapped layer with a table of per-adapter values, keyed by adapter name."""

    def __init__(self, base_layer: nn.Module, slot: _SelectionSlot) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters: dict[str, Any] = {}
        self._slot = slot

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def selected(self, batch_size: int) -> list[tuple[Any, torch.Tensor | None]]:
        """Returns this layer's value and row indices for every adapter of the current batch that it has."""
        selection = self._slot.current
        if selection is None:
            return []

        selection.check_batch_size(batch_size)
        return [(self.adapters[name], rows) for name, rows in selection.groups if name in self.adapters]


class LoraLinear(_AdapterTableLayer):
    """An ``nn.Linear`` plus the LoRA update of each adapter, applied to that adapter's batch rows only."""

    def __init__(self, base_layer: nn.Linear, slot: _SelectionSlot) -> None:
        super().__init__(base_layer, slot)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for weights, rows in self.selected(x.shape[0]):
            if rows is None:
                result = result + weights.delta(x)
            else:
                result.index_add_(0, rows, weights.delta(x.index_select(0, rows)))
        return result


class TokenRowsEmbedding(_AdapterTableLayer):
    """An ``nn.Embedding`` whose vectors for an adapter's trained token ids come from that adapter's rows."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.base_layer(input_ids)
        for token_rows, rows in self.selected(input_ids.shape[0]):
            if rows is None:
                embeddings = token_rows.replace_embeddings(input_ids, embeddings)
            else:
                replaced = token_rows.replace_embeddings(
                    input_ids.index_select(0, rows), embeddings.index_select(0, rows)
                )
                embeddings.index_copy_(0, rows, replaced)
        return embeddings


class TokenRowsHead(_AdapterTableLayer):
    """An output ``nn.Linear`` whose logits for an adapter's trained token ids use that adapter's rows."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.base_layer(hidden_states)
        selected = self.selected(hidden_states.shape[0])
        if not selected:
            return logits

        # One view of [batch, positions, features] covers inputs with or without a sequence dimension.
        batch_size = hidden_states.shape[0]
        hidden = hidden_states.reshape(batch_size, -1, hidden_states.shape[-1])
        flat_logits = logits.view(batch_size, -1, logits.shape[-1])
        positions = torch.arange(hidden.shape[1], device=hidden.device).view(1, -1, 1)
        for token_rows, rows in selected:
            if rows is None:
                columns = F.linear(hidden, token_rows.rows).to(logits.dtype)
                flat_logits.index_copy_(-1, token_rows.token_ids, columns)
            else:
                columns = F.linear(hidden.index_select(0, rows), token_rows.rows).to(logits.dtype)
                index = (rows.view(-1, 1, 1), positions, token_rows.token_ids.view(1, 1, -1))
                flat_logits.index_put_(index, columns)
        return logits


@dataclass(frozen=True)
class _ParsedAdapter:
    """One adapter's tensors, converted to the base model's dtype and device, keyed by module path."""

    lora: dict[str, LoraWeights]
    embedding_rows: TokenRows | None
    head_rows: TokenRows | None


class MultiLoraModel:
    """A causal LM whose batch rows can each use a different loaded LoRA adapter, or none.

    The base model is changed in place: its targeted linear layers, input embedding and output layer are
    wrapped. Outside a ``rows_using`` block every forward pass is the bare base model's.

    Thread safety: one thread runs forward passes. ``load_adapter`` may run on another thread. It reads and
    converts the files first and adds the adapter to the layers' tables under a lock, and ``rows_using`` only
    accepts adapters whose loading has finished, so a forward pass never uses a half-loaded adapter. An adapter
    must not be unloaded while a forward pass uses it. The caller's scheduler ensures that, and
    ``unload_adapter`` raises AdapterInUseError while a ``rows_using`` block selects the adapter.

    NOTE: the row indices are created on the input embedding's device, so a model split over several devices
    (``device_map``) is not supported.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._slot = _SelectionSlot()
        self._adapter_modules: dict[str, list[str]] = {}
        # Names and modules before wrapping, to resolve the module paths that peft's keys name.
        self._modules = dict(model.named_modules())

        embedding = model.get_input_embeddings()
        head = model.get_output_embeddings()
        self._embedding_path = self._path_of(embedding)
        self._head_path = self._path_of(head) if head is not None else None
        self._tied = head is not None and head.weight.data_ptr() == embedding.weight.data_ptr()
        self._device = embedding.weight.device

        # A subclass such as a scaled embedding computes more than a row lookup, so it is left unwrapped.
        self._embedding: TokenRowsEmbedding | None = None
        if type(embedding) is nn.Embedding:
            self._embedding = TokenRowsEmbedding(embedding, self._slot)
            self._replace_module(self._embedding_path, self._embedding)
        self._head: TokenRowsHead | None = None
        if self._head_path is not None and type(head) is nn.Linear and head.bias is None:
            self._head = TokenRowsHead(head, self._slot)
            self._replace_module(self._head_path, self._head)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    @property
    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return list(self._adapter_modules)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Reads a peft LoRA adapter folder and makes it selectable as ``name``.

        Raises AdapterLoadError (a ValueError) when a file is missing or invalid, or when the adapter uses a
        feature that this module cannot apply exactly, and ValueError when ``name`` is already loaded.
        """
        folder = Path(path)
        self._check_name_free(name)
        parsed = self._read_adapter(folder)

        with self._lock:
            self._check_name_free(name)
            for module_path, weights in parsed.lora.items():
                self._lora_layer(module_path).adapters[name] = weights
            if parsed.embedding_rows is not None and self._embedding is not None:
                self._embedding.adapters[name] = parsed.embedding_rows
            if parsed.head_rows is not None and self._head is not None:
                self._head.adapters[name] = parsed.head_rows
            self._adapter_modules[name] = list(parsed.lora)

        token_count = 0 if parsed.embedding_rows is None else len(parsed.embedding_rows.token_ids)
        logger.info(
            "MultiLoraModel: adapter %s loaded from %s (%d LoRA layers, %d trained token rows)",
            name,
            folder,
            len(parsed.lora),
            token_count,
        )

    def unload_adapter(self, name: str) -> None:
        """Removes adapter ``name`` from every layer's table. The wrapped layers stay in place."""
        with self._lock:
            if name not in self._adapter_modules:
                raise AdapterNotLoadedError(f"adapter {name!r} is not loaded")
            current = self._slot.current
            if current is not None and name in current.names:
                raise AdapterInUseError(
                    f"adapter {name!r} is selected by the running batch; unload it after that batch finishes"
                )

            for module_path in self._adapter_modules.pop(name):
                self.model.get_submodule(module_path).adapters.pop(name)
            for layer in (self._embedding, self._head):
                if layer is not None:
                    layer.adapters.pop(name, None)
        logger.info("MultiLoraModel: adapter %s unloaded", name)

    @contextlib.contextmanager
    def rows_using(self, adapter_names: Sequence[str | None]) -> Iterator[BatchSelection]:
        """Selects, for the forward passes inside the block, the adapter of each batch row (None: no adapter).

        The row indices are built once here, so a decoding loop of many steps can run inside one block.
        """
        with self._lock:
            unknown = sorted({name for name in adapter_names if name is not None} - set(self._adapter_modules))
            if unknown:
                raise AdapterNotLoadedError(f"adapters {unknown} are not loaded; load them before selecting them")
            previous = self._slot.current
            selection = BatchSelection.build(adapter_names, self._device)
            self._slot.current = selection

        try:
            yield selection
        finally:
            with self._lock:
                self._slot.current = previous

    def _check_name_free(self, name: str) -> None:
        if name in self._adapter_modules:
            raise ValueError(f"adapter {name!r} is already loaded; unload it first or load it under another name")

    def _path_of(self, module: nn.Module) -> str:
        return next(path for path, candidate in self._modules.items() if candidate is module)

    def _replace_module(self, path: str, module: nn.Module) -> None:
        parent_path, _, child_name = path.rpartition(".")
        setattr(self.model.get_submodule(parent_path), child_name, module)

    def _lora_layer(self, module_path: str) -> LoraLinear:
        """Returns the LoraLinear at ``module_path``, wrapping the linear layer there on first use."""
        current = self.model.get_submodule(module_path)
        if isinstance(current, LoraLinear):
            return current

        layer = LoraLinear(current, self._slot)
        self._replace_module(module_path, layer)
        return layer

    def _read_adapter(self, folder: Path) -> _ParsedAdapter:
        config = _read_config(folder)
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise AdapterLoadError(folder, f"{weights_path} is missing; peft saves LoRA weights in {WEIGHTS_FILE}")
        try:
            tensors = load_file(str(weights_path))
        except (OSError, SafetensorError) as error:
            raise AdapterLoadError(folder, f"{weights_path} is not a readable safetensors file: {error}") from error

        _check_single_adapter(folder, tensors)
        lora_tensors = {key: value for key, value in tensors.items() if _LORA_KEY.match(key)}
        token_tensors = {key: value for key, value in tensors.items() if _TOKEN_ROWS_KEY.match(key)}
        unexpected = sorted(set(tensors) - set(lora_tensors) - set(token_tensors))
        if unexpected:
            raise AdapterLoadError(
                folder,
                f"unexpected tensors {unexpected[:3]} ({len(unexpected)} in all); only LoRA A and B matrices of "
                "linear layers and trainable token rows are supported (save with save_embedding_layers=False)",
            )

        lora = self._parse_lora(folder, config, lora_tensors)
        embedding_rows, head_rows = self._parse_token_rows(folder, config, token_tensors)
        return _ParsedAdapter(lora=lora, embedding_rows=embedding_rows, head_rows=head_rows)

    def _parse_lora(
        self, folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> dict[str, LoraWeights]:
        matrices: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            match = _LORA_KEY.match(key)
            assert match is not None
            matrices.setdefault(match["module"], {})[match["matrix"]] = value

        lora: dict[str, LoraWeights] = {}
        for module_path, pair in matrices.items():
            if set(pair) != {"A", "B"}:
                raise AdapterLoadError(folder, f"module {module_path} has lora_{next(iter(pair))} but not its pair")
            linear = self._target_linear(folder, config, module_path)
            lora[module_path] = _lora_weights(folder, config, module_path, linear, pair["A"], pair["B"])
        return lora

    def _target_linear(self, folder: Path, config: dict[str, Any], module_path: str) -> nn.Linear:
        module = self._modules.get(module_path)
        if module is None:
            raise AdapterLoadError(
                folder, f"the base model has no module {module_path}; was it trained on another model?"
            )
        if module_path in (self._embedding_path, self._head_path):
            raise AdapterLoadError(folder, f"LoRA on the embedding or output layer ({module_path}) is not supported")
        if not isinstance(module, nn.Linear):
            raise AdapterLoadError(
                folder, f"module {module_path} is a {type(module).__name__}; only LoRA on nn.Linear is supported"
            )
        if not _is_targeted(module_path, config.get("target_modules")):
            raise AdapterLoadError(
                folder, f"module {module_path} has LoRA weights but target_modules={config.get('target_modules')!r}"
            )
        return module

    def _parse_token_rows(
        self, folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> tuple[TokenRows | None, TokenRows | None]:
        """Returns the adapter's trained rows of the input embedding and of the output layer."""
        indices = _token_indices(folder, config, self._embedding_path)
        embedding_rows: TokenRows | None = None
        head_rows: TokenRows | None = None
        for key, value in tensors.items():
            match = _TOKEN_ROWS_KEY.match(key)
            assert match is not None
            module_path = match["module"]
            token_ids = next((ids for layer, ids in indices.items() if _names_module(module_path, layer)), None)
            if token_ids is None:
                raise AdapterLoadError(folder, f"{key} has no matching entry in trainable_token_indices")

            if module_path == self._embedding_path and self._embedding is not None:
                if self._tied and self._head is None:
                    raise AdapterLoadError(
                        folder,
                        f"the output layer {self._head_path} is tied to the embedding but is not a bias-free "
                        "nn.Linear, so its rows for the trained tokens cannot be replaced",
                    )
                embedding_rows = _token_rows(folder, key, token_ids, value, self._embedding.weight)
                if self._tied:
                    head_rows = embedding_rows
            elif module_path == self._head_path and self._head is not None and not self._tied:
                head_rows = _token_rows(folder, key, token_ids, value, self._head.weight)
            else:
                raise AdapterLoadError(
                    folder,
                    f"trainable token rows of {module_path} are not supported; only rows of a plain nn.Embedding "
                    "input layer (and of a bias-free output layer that is not tied to it) can be applied",
                )

        if indices and embedding_rows is None and head_rows is None:
            raise AdapterLoadError(folder, "trainable_token_indices is set, but the weights hold no token rows")
        return embedding_rows, head_rows


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterLoadError(folder, f"{config_path} is missing; is this a peft adapter folder?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterLoadError(folder, f"{config_path} is unreadable or not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise AdapterLoadError(folder, f"{config_path} contains a JSON {type(config).__name__}, not an object")

    missing = [field_name for field_name in ("r", "lora_alpha") if not isinstance(config.get(field_name), int | float)]
    if missing:
        raise AdapterLoadError(folder, f"{config_path} is missing the numeric fields {missing}")
    if config.get("peft_type") != "LORA":
        raise AdapterLoadError(folder, f"peft_type {config.get('peft_type')!r} is not supported, only LORA is")
    for field_name, feature in _UNSUPPORTED_FIELDS.items():
        if config.get(field_name):
            raise AdapterLoadError(folder, f"{feature} ({field_name}={config[field_name]!r}) is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterLoadError(folder, f"bias={config['bias']!r} is not supported, only bias='none' is")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.startswith("mica"):
        raise AdapterLoadError(folder, f"the MiCA variant (init_lora_weights={init!r}) is not supported")
    return config


def _check_single_adapter(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    names = set()
    for key in tensors:
        match = _LORA_KEY.match(key) or _TOKEN_ROWS_KEY.match(key)
        if match is not None:
            names.add(match["adapter"])
    if len(names) > 1:
        raise AdapterLoadError(folder, f"the weights belong to several adapters {sorted(map(str, names))}")


def _lora_weights(
    folder: Path, config: dict[str, Any], module_path: str, linear: nn.Linear, a: torch.Tensor, b: torch.Tensor
) -> LoraWeights:
    rank = int(_pattern_value(config.get("rank_pattern") or {}, module_path, config["r"]))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module_path, config["lora_alpha"]))
    expected_a = (rank, linear.in_features)
    expected_b = (linear.out_features, rank)
    if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
        raise AdapterLoadError(
            folder,
            f"module {module_path} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
            f"expected {expected_a} and {expected_b} for rank {rank}",
        )

    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    # NOTE: with a float16 or bfloat16 base, peft keeps adapter weights in float32 (autocast_adapter_dtype), so
    # its outputs differ from these base-dtype weights by rounding. Only float32 is compared with peft in tests.
    weight = linear.weight
    return LoraWeights(
        a=a.to(device=weight.device, dtype=weight.dtype).contiguous(),
        b=b.to(device=weight.device, dtype=weight.dtype).contiguous(),
        scale=scale,
    )


def _pattern_value(pattern: dict[str, Any], module_path: str, default: Any) -> Any:
    """Returns the value of the first key of peft's ``rank_pattern`` or ``alpha_pattern`` that names the module."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def _is_targeted(module_path: str, target_modules: str | list[str] | None) -> bool:
    """Returns whether peft's ``target_modules`` (a regex, a list of name suffixes or "all-linear") names the module."""
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_path) is not None
    return any(_names_module(module_path, name) for name in target_modules)


def _names_module(module_path: str, name: str) -> bool:
    return module_path == name or module_path.endswith("." + name)


def _token_indices(folder: Path, config: dict[str, Any], embedding_path: str) -> dict[str, list[int]]:
    """Returns peft's ``trainable_token_indices`` as layer name to token ids. A bare list is for the input embedding."""
    indices = config.get("trainable_token_indices")
    if not indices:
        return {}
    if isinstance(indices, list):
        return {embedding_path: [int(token_id) for token_id in indices]}
    if isinstance(indices, dict):
        return {str(layer): [int(token_id) for token_id in ids] for layer, ids in indices.items()}
    raise AdapterLoadError(folder, f"trainable_token_indices={indices!r} is neither a list nor a mapping")


def _token_rows(folder: Path, key: str, token_ids: list[int], rows: torch.Tensor, weight: torch.Tensor) -> TokenRows:
    expected = (len(token_ids), weight.shape[1])
    if tuple(rows.shape) != expected:
        raise AdapterLoadError(folder, f"{key} has shape {tuple(rows.shape)}, expected {expected}")
    outside = [token_id for token_id in token_ids if not 0 <= token_id < weight.shape[0]]
    if outside:
        raise AdapterLoadError(
            folder, f"trainable token ids {outside} are outside the base model's vocabulary of {weight.shape[0]}"
        )
    if len(set(token_ids)) != len(token_ids):
        raise AdapterLoadError(folder, f"trainable_token_indices {token_ids} repeats a token id")

    return TokenRows(
        token_ids=torch.tensor(token_ids, dtype=torch.long, device=weight.device),
        rows=rows.to(device=weight.device, dtype=weight.dtype).contiguous(),
    )
