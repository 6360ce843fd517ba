"""Many LoRA adapters in one batched forward pass, checked against peft on the tiny model."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters.base_model import load_model_and_tokenizer
from adapters.multilora import (
    WEIGHTS_FILE,
    AdapterInUseError,
    AdapterNotLoadedError,
    LoraLinear,
    MultiLoraModel,
)

ATOL = 1e-5
SEQUENCE_LENGTH = 10
NEW_TOKENS = 8
# One adapter per rank, each with other target modules. TOKEN_ADAPTER also trains the planning token's row.
ADAPTER_CONFIGS: dict[str, dict[str, Any]] = {
    "qv4": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "attention8": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "tokens16": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj", "up_proj"], "use_rslora": True},
}
TOKEN_ADAPTER = "tokens16"


def load_base(model_path: str) -> tuple[Any, int]:
    """Returns a fresh base model with the planning token added, and the planning token's id."""
    from adapters.planning import PLANNING_TOKEN

    model, tokenizer = load_model_and_tokenizer(model_path)
    return model, int(tokenizer.convert_tokens_to_ids(PLANNING_TOKEN))


def save_lora(model_path: str, folder: Path, *, seed: int, token_rows: bool = False, **config: Any) -> Path:
    """Saves a LoRA adapter with random weights. With ``token_rows``, it also saves a random planning token row."""
    from peft import LoraConfig, get_peft_model

    model, planning_id = load_base(model_path)
    torch.manual_seed(seed)
    extra = {"trainable_token_indices": [planning_id]} if token_rows else {}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **extra, **config))
    if token_rows:
        # peft starts the trainable row as a copy of the base row, which would change nothing.
        delta = peft_model.get_input_embeddings().token_adapter.trainable_tokens_delta["default"]
        delta.data += torch.randn_like(delta) * 0.5
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    return folder


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multilora-adapters")
    return {
        name: save_lora(tiny_model_path, root / name, seed=seed, token_rows=name == TOKEN_ADAPTER, **config)
        for seed, (name, config) in enumerate(ADAPTER_CONFIGS.items(), start=1)
    }


@pytest.fixture(scope="module")
def reference_models(tiny_model_path: str, adapter_folders: dict[str, Path]) -> dict[str | None, Any]:
    """peft's model of each adapter, each on its own base model. The key None is the bare base model."""
    from peft import PeftModel

    models: dict[str | None, Any] = {None: load_base(tiny_model_path)[0]}
    for name, folder in adapter_folders.items():
        models[name] = PeftModel.from_pretrained(load_base(tiny_model_path)[0], str(folder)).eval()
    return models


@pytest.fixture()
def multi(tiny_model_path: str, adapter_folders: dict[str, Path]) -> MultiLoraModel:
    multi = MultiLoraModel(load_base(tiny_model_path)[0])
    for name, folder in adapter_folders.items():
        multi.load_adapter(name, folder)
    return multi


@pytest.fixture(scope="module")
def planning_id(tiny_model_path: str) -> int:
    return load_base(tiny_model_path)[1]


def sample_input(planning_id: int, rows: int = 4) -> torch.Tensor:
    """Random token ids that contain the planning token in every row, at different positions."""
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(0, planning_id, (rows, SEQUENCE_LENGTH), generator=generator)
    input_ids[:, 3] = planning_id
    input_ids[rows - 1, 7] = planning_id
    return input_ids


def logits_of(model: Callable[..., Any], input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def greedy_tokens(forward: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Appends NEW_TOKENS greedy tokens per row, running the whole sequence at every step."""
    for _ in range(NEW_TOKENS):
        next_ids = forward(input_ids)[:, -1].argmax(dim=-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_ids], dim=1)
    return input_ids[:, -NEW_TOKENS:]


def cached_greedy_tokens(model: Callable[..., Any], prompts: list[torch.Tensor]) -> torch.Tensor:
    """Appends NEW_TOKENS greedy tokens per prompt, decoding the left-padded batch on a KV cache."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.stack([torch.nn.functional.pad(prompt, (width - len(prompt), 0)) for prompt in prompts])
    attention_mask = torch.stack([torch.arange(width) >= width - len(prompt) for prompt in prompts]).long()
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = None
    generated = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
            cache = output.cache
            input_ids = output.logits[:, -1].argmax(dim=-1, keepdim=True)
            generated.append(input_ids)
            position_ids = position_ids[:, -1:] + 1
            attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)
    return torch.cat(generated, dim=1)


@pytest.mark.parametrize("name", list(ADAPTER_CONFIGS))
def test_single_adapter_matches_peft(
    name: str, multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    input_ids = sample_input(planning_id)
    with multi.rows_using([name] * len(input_ids)):
        logits = logits_of(multi, input_ids)
    expected = logits_of(reference_models[name], input_ids)
    base = logits_of(reference_models[None], input_ids)

    assert not torch.allclose(expected, base, atol=1e-2), "the random adapter must change the logits"
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_token_rows_change_planning_logit(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    input_ids = sample_input(planning_id)
    with multi.rows_using([TOKEN_ADAPTER, None, TOKEN_ADAPTER, None]):
        logits = logits_of(multi, input_ids)
    base = logits_of(reference_models[None], input_ids)
    expected = logits_of(reference_models[TOKEN_ADAPTER], input_ids)

    assert (logits[0, :, planning_id] - base[0, :, planning_id]).abs().mean() > 0.5
    torch.testing.assert_close(logits[0, :, planning_id], expected[0, :, planning_id], atol=ATOL, rtol=0)
    assert torch.equal(logits[1], base[1])


@pytest.mark.parametrize(
    "row_adapters",
    [
        [TOKEN_ADAPTER, None, "qv4", TOKEN_ADAPTER],
        ["attention8", "qv4", None, "attention8"],
        [None, "attention8", TOKEN_ADAPTER, "qv4"],
    ],
)
def test_mixed_batch_matches_peft_per_row(
    row_adapters: list[str | None],
    multi: MultiLoraModel,
    reference_models: dict[str | None, Any],
    planning_id: int,
) -> None:
    input_ids = sample_input(planning_id)
    with multi.rows_using(row_adapters):
        logits = logits_of(multi, input_ids)

    for row, name in enumerate(row_adapters):
        expected = logits_of(reference_models[name], input_ids[row : row + 1])
        torch.testing.assert_close(logits[row : row + 1], expected, atol=ATOL, rtol=0, msg=f"row {row} ({name})")


def test_mixed_greedy_decoding_matches_peft(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    row_adapters = [TOKEN_ADAPTER, None, "qv4", "attention8"]
    input_ids = sample_input(planning_id)
    with multi.rows_using(row_adapters):
        generated = greedy_tokens(lambda ids: logits_of(multi, ids), input_ids)

    for row, name in enumerate(row_adapters):
        model = reference_models[name]
        expected = greedy_tokens(lambda ids, model=model: logits_of(model, ids), input_ids[row : row + 1])
        assert generated[row].tolist() == expected[0].tolist(), f"row {row} ({name})"
    assert planning_id in generated[0].tolist(), "the token adapter's row should make it emit the planning token"
    assert len({tuple(row.tolist()) for row in generated}) == len(row_adapters)


def test_cached_padded_decoding_matches_peft(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    row_adapters = ["qv4", TOKEN_ADAPTER, None, TOKEN_ADAPTER]
    lengths = [10, 6, 8, 4]
    full = sample_input(planning_id)
    prompts = [full[row, SEQUENCE_LENGTH - length :] for row, length in enumerate(lengths)]
    with multi.rows_using(row_adapters):
        generated = cached_greedy_tokens(multi, prompts)

    for row, name in enumerate(row_adapters):
        model = reference_models[name]
        expected = greedy_tokens(lambda ids, model=model: logits_of(model, ids), prompts[row].unsqueeze(0))
        assert generated[row].tolist() == expected[0].tolist(), f"row {row} ({name})"


def test_rows_without_selection_use_base(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    input_ids = sample_input(planning_id)

    assert torch.equal(logits_of(multi, input_ids), logits_of(reference_models[None], input_ids))


def test_load_beside_registered_adapter(
    tiny_model_path: str, adapter_folders: dict[str, Path], reference_models: dict[str | None, Any], planning_id: int
) -> None:
    multi = MultiLoraModel(load_base(tiny_model_path)[0])
    multi.load_adapter("qv4", adapter_folders["qv4"])
    input_ids = sample_input(planning_id)
    with multi.rows_using(["qv4"] * 4):
        before = logits_of(multi, input_ids)
    multi.load_adapter("attention8", adapter_folders["attention8"])
    with multi.rows_using(["qv4", "attention8", "qv4", "attention8"]):
        mixed = logits_of(multi, input_ids)
    expected = logits_of(reference_models["attention8"], input_ids)

    assert multi.loaded_adapters == ["qv4", "attention8"]
    assert torch.equal(mixed[0::2], before[0::2])
    torch.testing.assert_close(mixed[1::2], expected[1::2], atol=ATOL, rtol=0)


def test_unload_restores_base_logits(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    input_ids = sample_input(planning_id)
    base = logits_of(reference_models[None], input_ids)
    for name in list(ADAPTER_CONFIGS):
        multi.unload_adapter(name)
    tables = [module.adapters for module in multi.model.modules() if isinstance(module, LoraLinear)]

    assert multi.loaded_adapters == []
    assert tables and all(table == {} for table in tables)
    with multi.rows_using([None] * 4):
        assert torch.equal(logits_of(multi, input_ids), base)


def test_unload_keeps_other_adapters(
    multi: MultiLoraModel, reference_models: dict[str | None, Any], planning_id: int
) -> None:
    input_ids = sample_input(planning_id)
    multi.unload_adapter(TOKEN_ADAPTER)
    with multi.rows_using([None, "qv4", None, "qv4"]):
        logits = logits_of(multi, input_ids)

    assert torch.equal(logits[0::2], logits_of(reference_models[None], input_ids[0::2]))
    torch.testing.assert_close(logits[1::2], logits_of(reference_models["qv4"], input_ids[1::2]), atol=ATOL, rtol=0)
    with pytest.raises(AdapterNotLoadedError, match=TOKEN_ADAPTER), multi.rows_using([TOKEN_ADAPTER]):
        pass


def test_unload_selected_adapter_rejected(multi: MultiLoraModel) -> None:
    with multi.rows_using(["qv4", None]), pytest.raises(AdapterInUseError, match="qv4"):
        multi.unload_adapter("qv4")

    assert "qv4" in multi.loaded_adapters


def test_load_same_name_twice_rejected(multi: MultiLoraModel, adapter_folders: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="already loaded"):
        multi.load_adapter("qv4", adapter_folders["attention8"])


def test_batch_size_mismatch_rejected(multi: MultiLoraModel, planning_id: int) -> None:
    with multi.rows_using(["qv4", None]), pytest.raises(ValueError, match="4 batch rows"):
        logits_of(multi, sample_input(planning_id))


def test_load_during_forward_passes(
    tiny_model_path: str, adapter_folders: dict[str, Path], reference_models: dict[str | None, Any], planning_id: int
) -> None:
    multi = MultiLoraModel(load_base(tiny_model_path)[0])
    multi.load_adapter("qv4", adapter_folders["qv4"])
    input_ids = sample_input(planning_id)
    expected = logits_of(reference_models["qv4"], input_ids)
    loader = threading.Thread(
        target=lambda: [multi.load_adapter(name, adapter_folders[name]) for name in ("attention8", TOKEN_ADAPTER)]
    )

    loader.start()
    results = []
    with multi.rows_using(["qv4"] * 4):
        while loader.is_alive() or len(results) < 3:
            results.append(logits_of(multi, input_ids))
    loader.join()

    assert multi.loaded_adapters == ["qv4", "attention8", TOKEN_ADAPTER]
    for logits in results:
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_adapter_name_segment_in_keys(
    tmp_path: Path,
    multi: MultiLoraModel,
    adapter_folders: dict[str, Path],
    reference_models: dict[str | None, Any],
    planning_id: int,
) -> None:
    folder = copy_adapter(adapter_folders[TOKEN_ADAPTER], tmp_path / "named")
    renamed = {with_adapter_name(key): value for key, value in load_file(folder / WEIGHTS_FILE).items()}
    save_file(renamed, folder / WEIGHTS_FILE)
    multi.load_adapter("named", folder)
    input_ids = sample_input(planning_id)
    with multi.rows_using(["named"] * 4):
        logits = logits_of(multi, input_ids)

    assert any(key.endswith("lora_A.default.weight") for key in renamed)
    assert any(key.endswith("trainable_tokens_delta.default") for key in renamed)
    torch.testing.assert_close(logits, logits_of(reference_models[TOKEN_ADAPTER], input_ids), atol=ATOL, rtol=0)


def test_rank_and_alpha_patterns_match_peft(tmp_path: Path, tiny_model_path: str, planning_id: int) -> None:
    from peft import PeftModel

    config = {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    patterns = {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 32}}
    folder = save_lora(tiny_model_path, tmp_path / "patterns", seed=11, **config, **patterns)
    multi = MultiLoraModel(load_base(tiny_model_path)[0])
    multi.load_adapter("patterns", folder)
    reference = PeftModel.from_pretrained(load_base(tiny_model_path)[0], str(folder)).eval()
    input_ids = sample_input(planning_id)
    with multi.rows_using(["patterns"] * 4):
        logits = logits_of(multi, input_ids)
    v_proj = multi.model.get_submodule("model.layers.0.self_attn.v_proj").adapters["patterns"]

    assert v_proj.a.shape[0] == 2
    assert v_proj.scale == 16.0
    torch.testing.assert_close(logits, logits_of(reference, input_ids), atol=ATOL, rtol=0)


def test_weights_take_base_dtype(tiny_model_path: str, adapter_folders: dict[str, Path]) -> None:
    model = load_base(tiny_model_path)[0].to(torch.bfloat16)
    multi = MultiLoraModel(model)
    multi.load_adapter(TOKEN_ADAPTER, adapter_folders[TOKEN_ADAPTER])
    q_proj = multi.model.get_submodule("model.layers.1.self_attn.q_proj").adapters[TOKEN_ADAPTER]
    rows = multi.model.get_input_embeddings().adapters[TOKEN_ADAPTER].rows

    assert q_proj.a.dtype == torch.bfloat16
    assert q_proj.b.dtype == torch.bfloat16
    assert rows.dtype == torch.bfloat16


def test_dora_adapter_rejected(tmp_path: Path, tiny_model_path: str) -> None:
    folder = save_lora(tiny_model_path, tmp_path / "dora", seed=3, r=4, target_modules=["q_proj"], use_dora=True)
    multi = MultiLoraModel(load_base(tiny_model_path)[0])

    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*DoRA"):
        multi.load_adapter("dora", folder)
    assert multi.loaded_adapters == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"bias": "all"}, "bias='all' is not supported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["embed_tokens"]}, "unexpected tensors"),
    ],
)
def test_unsupported_config_rejected(
    setting: dict[str, Any], message: str, tmp_path: Path, tiny_model_path: str
) -> None:
    config = {"r": 4, "target_modules": ["q_proj"], **setting}
    folder = save_lora(tiny_model_path, tmp_path / "unsupported", seed=4, **config)
    multi = MultiLoraModel(load_base(tiny_model_path)[0])

    with pytest.raises(ValueError, match=message):
        multi.load_adapter("unsupported", folder)


def test_lora_on_non_linear_rejected(
    tmp_path: Path, tiny_model_path: str, multi: MultiLoraModel, adapter_folders: dict[str, Path]
) -> None:
    folder = copy_adapter(adapter_folders["qv4"], tmp_path / "norm")
    prefix = "base_model.model.model.norm"
    tensors = {f"{prefix}.lora_A.weight": torch.zeros(4, 32), f"{prefix}.lora_B.weight": torch.zeros(32, 4)}
    save_file(tensors, folder / WEIGHTS_FILE)
    patch_config(folder, target_modules=["norm"])

    with pytest.raises(ValueError, match="model.norm is a LlamaRMSNorm; only LoRA on nn.Linear"):
        multi.load_adapter("norm", folder)


def test_missing_weights_file_rejected(tmp_path: Path, multi: MultiLoraModel, adapter_folders: dict[str, Path]) -> None:
    folder = copy_adapter(adapter_folders["qv4"], tmp_path / "no-weights")
    (folder / WEIGHTS_FILE).unlink()

    with pytest.raises(ValueError, match=re.escape(f"{folder / WEIGHTS_FILE} is missing")):
        multi.load_adapter("no-weights", folder)
    assert "no-weights" not in multi.loaded_adapters


def test_missing_folder_rejected(tmp_path: Path, multi: MultiLoraModel) -> None:
    folder = tmp_path / "absent"

    with pytest.raises(ValueError, match=re.escape(f"{folder / 'adapter_config.json'} is missing")):
        multi.load_adapter("absent", folder)


def test_unknown_adapter_selection_rejected(multi: MultiLoraModel) -> None:
    with pytest.raises(AdapterNotLoadedError, match="'nobody'"), multi.rows_using(["qv4", "nobody"]):
        pass


def copy_adapter(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def with_adapter_name(key: str) -> str:
    """Returns a saved peft key as a PeftModel's state dict names it, with the adapter name "default"."""
    if key.endswith(".weight"):
        return key.removesuffix(".weight") + ".default.weight"
    return key + ".default"


def patch_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
