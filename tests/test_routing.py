"""Routing a partner's requests to its active adapter without restarting the gateway."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from adapters.keys import Keys
from adapters.registry import AdapterRegistry, AdapterVersion, adapter_folder
from adapters.settings import Settings
from tests.conftest import TINY_MODEL_NAME, RunningGateway


def save_random_lora(model_path: str, folder: Path, seed: int = 1) -> None:
    """Saves a LoRA adapter with random (non-zero) weights, so that it changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)


def register_adapter(settings: Settings, model_path: str, partner_id: str, client: redis.Redis) -> AdapterVersion:
    registry = AdapterRegistry(client, Keys(settings.key_prefix))
    version = registry.allocate_version(partner_id)
    folder = adapter_folder(settings.artifact_dir, partner_id, version)
    save_random_lora(model_path, folder)
    adapter = AdapterVersion(
        partner_id=partner_id,
        version=version,
        base_model=TINY_MODEL_NAME,
        path=str(folder),
        created_at=int(time.time()),
    )
    registry.register(adapter, activate=True)
    return adapter


def ask(
    gateway: RunningGateway, partner: str, *, model: str = TINY_MODEL_NAME, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Which one?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"X-Partner-ID": partner, **(headers or {})},
        timeout=60,
    )


def test_active_adapter_serves_partner(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    before = ask(gateway, "ivan")
    register_adapter(tiny_settings, tiny_model_path, "ivan", redis_client)
    after = ask(gateway, "ivan")

    assert before.headers["x-adapter"] == "none"
    assert after.headers["x-adapter"] == "ivan/1"
    assert after.json()["choices"][0]["message"]["content"] != before.json()["choices"][0]["message"]["content"]


def test_other_partner_keeps_base_model(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    base_answer = ask(gateway, "judy").json()["choices"][0]["message"]["content"]
    register_adapter(tiny_settings, tiny_model_path, "ivan", redis_client)
    ask(gateway, "ivan")
    other = ask(gateway, "judy")

    assert other.headers["x-adapter"] == "none"
    assert other.json()["choices"][0]["message"]["content"] == base_answer


def test_turn_records_adapter_used(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "kim", redis_client)
    ask(gateway, "kim")
    turn = httpx.get(f"{gateway.base_url}/v1/partners/kim/sessions").json()["data"][0]["turns"][0]

    assert turn["adapter"] == "kim/1"


def test_adapter_list_marks_active(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "leo", redis_client)
    register_adapter(tiny_settings, tiny_model_path, "leo", redis_client)
    listing = httpx.get(f"{gateway.base_url}/v1/partners/leo/adapters").json()

    assert [adapter["id"] for adapter in listing["data"]] == ["leo/1", "leo/2"]
    assert [adapter["status"] for adapter in listing["data"]] == ["inactive", "active"]


def test_convention_adapter_serves_partners_without_their_own(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    from adapters.registry import CONVENTION_OWNER

    bare = ask(gateway, "mia")
    register_adapter(tiny_settings, tiny_model_path, CONVENTION_OWNER, redis_client)
    served = ask(gateway, "mia")
    register_adapter(tiny_settings, tiny_model_path, "nora", redis_client)
    own = ask(gateway, "nora")
    partners = httpx.get(f"{gateway.base_url}/v1/partners/{CONVENTION_OWNER}")

    assert bare.headers["x-adapter"] == "none"
    assert served.headers["x-adapter"] == f"{CONVENTION_OWNER}/1"
    assert own.headers["x-adapter"] == "nora/1"
    assert partners.status_code == 400, "the convention adapter's owner is not a partner id"


def test_no_adapter_header_serves_bare_model(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    bare = ask(gateway, "olga")
    register_adapter(tiny_settings, tiny_model_path, "olga", redis_client)
    forced = ask(gateway, "olga", headers={"X-Adapter": "none"})

    assert forced.headers["x-adapter"] == "none"
    assert forced.json()["choices"][0]["message"]["content"] == bare.json()["choices"][0]["message"]["content"]


def test_unknown_adapter_header_is_rejected(gateway: RunningGateway) -> None:
    response = ask(gateway, "pia", headers={"X-Adapter": "pia/1"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Adapter"


def test_convention_adapter_id_serves_every_partner(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    from adapters.registry import CONVENTION_OWNER

    register_adapter(tiny_settings, tiny_model_path, "quinn", redis_client)
    register_adapter(tiny_settings, tiny_model_path, CONVENTION_OWNER, redis_client)
    model_id = f"ft:{TINY_MODEL_NAME}:{CONVENTION_OWNER}:1"
    served = ask(gateway, "quinn", model=model_id)
    listed = httpx.get(f"{gateway.base_url}/v1/models").json()["data"]

    assert served.headers["x-adapter"] == f"{CONVENTION_OWNER}/1"
    assert model_id in [model["id"] for model in listed]


def test_no_adapter_header_conflicts_with_ft_id(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, redis_client: redis.Redis
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "rosa", redis_client)
    response = ask(gateway, "rosa", model=f"ft:{TINY_MODEL_NAME}:rosa:1", headers={"X-Adapter": "none"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Adapter"


@pytest.mark.parametrize("version", ["01", "\u00b2", "\u0661", "9" * 5000])
def test_odd_version_ids_not_found(gateway: RunningGateway, version: str) -> None:
    response = ask(gateway, "rosa", model=f"ft:{TINY_MODEL_NAME}:rosa:{version}")

    assert response.status_code == 404
