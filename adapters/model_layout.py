"""The module names and layer sizes of a loaded base model, which imported adapters are checked against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModuleShape:
    """One module of the base model.

    ``kind`` is ``linear``, ``embedding`` or ``other``. For an embedding, ``in_features`` is the number of rows
    (the vocabulary size) and ``out_features`` the embedding width, as for a lookup from token id to vector.
    """

    kind: str
    type_name: str
    in_features: int = 0
    out_features: int = 0

    @property
    def token_row_width(self) -> int:
        """Returns the length of one token's row: the embedding width, or the input width of an output layer."""
        return self.out_features if self.kind == "embedding" else self.in_features


@dataclass(frozen=True)
class BaseModelLayout:
    """Every module of the base model by its name in the unwrapped model, as PEFT names them in adapter files."""

    modules: dict[str, ModuleShape]
    input_embedding: str | None
    output_embedding: str | None
    tied_embeddings: bool
    planning_token_id: int

    def linear_suffixes(self) -> list[str]:
        """Returns the distinct last name parts of the linear layers, e.g. ``q_proj``, for error messages."""
        names = {name.rsplit(".", 1)[-1] for name, module in self.modules.items() if module.kind == "linear"}
        return sorted(names)


def describe_model(model: Any, *, planning_token_id: int) -> BaseModelLayout:
    """Builds the layout of a transformers model, also after the engine has loaded adapters into it.

    The model may be wrapped in a PeftModel, or kept as ``.model`` by adapters.multilora's MultiLoraModel. Adapter
    layers are described by the layer they wrap, and their adapter submodules are skipped, so the result is the
    same before and after adapters are loaded.
    """
    base = _unwrap_model(model)
    layers = {name: layer for name, layer in _walk(base) if name}
    input_layer = _unwrap_layer(base.get_input_embeddings())
    output_module = base.get_output_embeddings()
    output_layer = _unwrap_layer(output_module) if output_module is not None else None

    tied = output_layer is not None and output_layer.weight.data_ptr() == input_layer.weight.data_ptr()
    return BaseModelLayout(
        modules={name: _shape(layer) for name, layer in layers.items()},
        input_embedding=next((name for name, layer in layers.items() if layer is input_layer), None),
        output_embedding=next((name for name, layer in layers.items() if layer is output_layer), None),
        tied_embeddings=tied,
        planning_token_id=planning_token_id,
    )


def _unwrap_model(model: Any) -> Any:
    import torch
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.get_base_model()
    inner = getattr(model, "model", None)
    if not isinstance(model, torch.nn.Module) and isinstance(inner, torch.nn.Module):
        return inner
    return model


def _unwrap_layer(module: Any) -> Any:
    """Returns the layer that adapter wrappers of PEFT or adapters.multilora wrap, or ``module`` itself."""
    import torch
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(module, AuxiliaryTrainingWrapper):
        module = module.original_module
    while isinstance(getattr(module, "base_layer", None), torch.nn.Module):
        module = module.base_layer
    return module


def _walk(module: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields (name, unwrapped layer) for every module, without descending into adapter wrappers."""
    layer = _unwrap_layer(module)
    yield prefix, layer
    if layer is not module:
        return

    for child_name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def _shape(layer: Any) -> ModuleShape:
    import torch

    type_name = type(layer).__name__
    if isinstance(layer, torch.nn.Linear):
        return ModuleShape("linear", type_name, int(layer.in_features), int(layer.out_features))
    if isinstance(layer, torch.nn.Embedding):
        return ModuleShape("embedding", type_name, int(layer.num_embeddings), int(layer.embedding_dim))
    return ModuleShape("other", type_name)
