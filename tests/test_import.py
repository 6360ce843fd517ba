"""Importing a partner's PEFT LoRA adapter archive through POST /v1/partners/{partner_id}/adapters/import."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from adapters.import_archive import read_adapter_archive
from adapters.import_errors import ArchiveTooLargeError, InvalidArchiveError
from adapters.keys import Keys
from adapters.settings import Settings
from tests.conftest import TINY_MODEL_NAME, RunningGateway, make_settings

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
Files = dict[str, bytes]


def save_lora(model: Any, folder: Path, **lora_options: Any) -> Files:
    """Saves a LoRA with random, non-zero weights on ``model`` and returns its two files.

    Without options it is rank 4 on q_proj and v_proj; ``lora_options`` override LoraConfig's fields.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    options = {"r": 4, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    config = LoraConfig(**{**options, **lora_options})
    get_peft_model(model, config).save_pretrained(folder, save_embedding_layers=False)
    return {name: (folder / name).read_bytes() for name in (CONFIG, WEIGHTS)}


@pytest.fixture(scope="module")
def good_files(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Files:
    """A rank-4 LoRA on q_proj and v_proj of the tiny model, as PEFT saves it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    return save_lora(model, tmp_path_factory.mktemp("good-lora"))


def planning_token_lora(model_path: str, folder: Path, token_id: int | None = None) -> tuple[Files, int]:
    """Saves a LoRA that also trains one embedding row of the model with the planning token added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.base_model import add_planning_token

    model = AutoModelForCausalLM.from_pretrained(model_path)
    planning_token_id = add_planning_token(model, AutoTokenizer.from_pretrained(model_path))
    trained_id = planning_token_id if token_id is None else token_id
    return save_lora(model, folder, trainable_token_indices=[trained_id]), planning_token_id


def zip_bytes(files: Files, *, folder: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(folder + name, content)
    return buffer.getvalue()


def tar_gz_bytes(files: Files, *, folder: str = "", symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        if folder:
            directory = tarfile.TarInfo(folder.rstrip("/"))
            directory.type = tarfile.DIRTYPE
            archive.addfile(directory)
        for name, content in files.items():
            info = tarfile.TarInfo(folder + name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        if symlink is not None:
            link = tarfile.TarInfo(folder + symlink)
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            archive.addfile(link)
    return buffer.getvalue()


def with_config(files: Files, **changes: Any) -> Files:
    config = json.loads(files[CONFIG])
    config.update(changes)
    return {**files, CONFIG: json.dumps(config).encode()}


def post_archive(
    gateway: RunningGateway, partner: str, body: bytes, content_type: str = "application/zip", **params: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/partners/{partner}/adapters/import",
        content=body,
        headers={"Content-Type": content_type},
        params=params,
        timeout=60,
    )


def ask(gateway: RunningGateway, partner: str) -> httpx.Response:
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "Which one?"}], "max_tokens": 4}
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers={"X-Partner-ID": partner}, timeout=60
    )


def leftover_files(settings: Settings) -> list[str]:
    if not settings.artifact_dir.exists():
        return []
    return sorted(str(path.relative_to(settings.artifact_dir)) for path in settings.artifact_dir.rglob("*"))


def assert_nothing_registered(client: redis.Redis, settings: Settings, partner: str) -> None:
    keys = Keys(settings.key_prefix)
    assert client.hlen(keys.adapters(partner)) == 0
    assert client.get(keys.adapter_version_counter(partner)) is None, "no version number may be consumed"
    assert client.get(keys.active_adapter(partner)) is None
    assert leftover_files(settings) == []


@pytest.fixture()
def start_gateway(
    key_prefix: str, tmp_path: Path, tiny_model_path: str, model_cache_dir: Path
) -> Iterator[Callable[..., tuple[RunningGateway, Settings]]]:
    """Starts a gateway on the tiny model with settings overrides, such as lower import limits."""
    started: list[RunningGateway] = []

    def start(**overrides: Any) -> tuple[RunningGateway, Settings]:
        settings = make_settings(
            key_prefix=key_prefix,
            tmp_path=tmp_path,
            model_name=TINY_MODEL_NAME,
            model_path=tiny_model_path,
            model_cache_dir=model_cache_dir,
            **overrides,
        )
        started.append(RunningGateway(settings).start())
        return started[-1], settings

    yield start
    for running in started:
        running.stop()


def test_zip_import_serves_partner(gateway: RunningGateway, tiny_settings: Settings, good_files: Files) -> None:
    before = ask(gateway, "olga")
    response = post_archive(gateway, "olga", zip_bytes(good_files, folder="my-lora/"))
    after = ask(gateway, "olga")
    adapter = response.json()
    folder = tiny_settings.artifact_dir / "olga" / "1"

    assert response.status_code == 200, response.text
    assert adapter["id"] == "olga/1"
    assert adapter["object"] == "adapter"
    assert adapter["status"] == "active"
    assert adapter["base_model"] == TINY_MODEL_NAME
    assert adapter["metrics"] == {"imported": True, "rank": 4, "target_modules": ["q_proj", "v_proj"]}
    assert adapter["path"] == str(folder)
    assert sorted(path.name for path in folder.iterdir()) == [CONFIG, WEIGHTS]
    assert (folder / WEIGHTS).read_bytes() == good_files[WEIGHTS]
    assert leftover_files(tiny_settings) == ["olga", "olga/1", f"olga/1/{CONFIG}", f"olga/1/{WEIGHTS}"]
    assert before.headers["x-adapter"] == "none"
    assert after.status_code == 200, after.text
    assert after.headers["x-adapter"] == "olga/1"


def test_multipart_upload_registers_version(gateway: RunningGateway, good_files: Files) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/partners/pia/adapters/import",
        files={"file": ("adapter.zip", zip_bytes(good_files), "application/zip")},
        data={"purpose": "fine-tune"},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    assert response.json()["id"] == "pia/1"
    assert ask(gateway, "pia").headers["x-adapter"] == "pia/1"


def test_multipart_without_file_field_rejected(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/partners/pia/adapters/import",
        files={"upload": ("adapter.zip", b"PK\x05\x06" + bytes(18), "application/zip")},
        timeout=60,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_file"
    assert response.json()["error"]["param"] == "file"


def test_tar_gz_import_registers_version(gateway: RunningGateway, good_files: Files) -> None:
    response = post_archive(gateway, "quinn", tar_gz_bytes(good_files, folder="quinn-lora/"), "application/gzip")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == "quinn/1"
    assert ask(gateway, "quinn").headers["x-adapter"] == "quinn/1"


def test_import_without_activation_keeps_active(
    gateway: RunningGateway, good_files: Files, tiny_settings: Settings, redis_client: redis.Redis
) -> None:
    first = post_archive(gateway, "rosa", zip_bytes(good_files))
    second = post_archive(gateway, "rosa", zip_bytes(good_files), activate="false")
    listing = httpx.get(f"{gateway.base_url}/v1/partners/rosa/adapters").json()

    assert first.json()["status"] == "active"
    assert second.status_code == 200, second.text
    assert second.json()["id"] == "rosa/2"
    assert second.json()["status"] == "inactive"
    assert listing["active_version"] == 1
    assert ask(gateway, "rosa").headers["x-adapter"] == "rosa/1"


def test_planning_token_rows_accepted(gateway: RunningGateway, tiny_model_path: str, tmp_path: Path) -> None:
    files, _ = planning_token_lora(tiny_model_path, tmp_path / "lora")
    response = post_archive(gateway, "sami", zip_bytes(files))

    assert response.status_code == 200, response.text
    assert ask(gateway, "sami").headers["x-adapter"] == "sami/1"


def test_other_token_rows_rejected(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    files, planning_token_id = planning_token_lora(tiny_model_path, tmp_path / "lora", token_id=5)
    response = post_archive(gateway, "sami", zip_bytes(files))
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "adapter_base_mismatch"
    assert f"set it to [{planning_token_id}]" in error["message"]
    assert_nothing_registered(redis_client, tiny_settings, "sami")


ACCEPTED_VARIANTS: dict[str, dict[str, Any]] = {
    "regex": {"target_modules": r".*\.(q_proj|o_proj)"},
    "rank-pattern": {"target_modules": ["q_proj", "k_proj"], "rank_pattern": {"k_proj": 2}},
    "mlp": {"target_modules": ["gate_proj", "down_proj"], "use_rslora": True},
    "one-layer": {"target_modules": ["v_proj"], "layers_to_transform": [1]},
    "all-linear": {"target_modules": "all-linear"},
}


def test_lora_variants_served_after_import(gateway: RunningGateway, tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    for name, options in ACCEPTED_VARIANTS.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        files = save_lora(model, tmp_path / name, **options)
        response = post_archive(gateway, name, zip_bytes(files))
        served = ask(gateway, name)

        assert response.status_code == 200, f"{name}: {response.text}"
        assert served.status_code == 200, f"{name}: {served.text}"
        assert served.headers["x-adapter"] == f"{name}/1", name


def test_layout_same_after_adapters_load(tiny_model_path: str, tmp_path: Path) -> None:
    from peft import PeftModel

    from adapters.base_model import load_model_and_tokenizer
    from adapters.model_layout import describe_model

    model, tokenizer = load_model_and_tokenizer(tiny_model_path)
    planning_token_id = int(tokenizer.convert_tokens_to_ids("[remention]"))
    before = describe_model(model, planning_token_id=planning_token_id)
    planning_token_lora(tiny_model_path, tmp_path / "lora")
    wrapped = PeftModel.from_pretrained(model, str(tmp_path / "lora"))
    after = describe_model(wrapped, planning_token_id=planning_token_id)

    assert after == before
    assert before.input_embedding == "model.embed_tokens"
    assert before.output_embedding == "lm_head"
    assert before.tied_embeddings is True
    assert before.modules["model.layers.0.self_attn.k_proj"].in_features == 32
    assert before.modules["model.layers.0.self_attn.k_proj"].out_features == 16
    assert before.modules["model.embed_tokens"].in_features == planning_token_id + 1


def test_layout_same_under_multilora(tiny_model_path: str, tmp_path: Path) -> None:
    multilora = pytest.importorskip("adapters.multilora")
    from adapters.base_model import load_model_and_tokenizer
    from adapters.model_layout import describe_model

    model, tokenizer = load_model_and_tokenizer(tiny_model_path)
    planning_token_id = int(tokenizer.convert_tokens_to_ids("[remention]"))
    before = describe_model(model, planning_token_id=planning_token_id)
    planning_token_lora(tiny_model_path, tmp_path / "lora")
    wrapped = multilora.MultiLoraModel(model)
    wrapped.load_adapter("imported", tmp_path / "lora")
    after = describe_model(wrapped, planning_token_id=planning_token_id)

    assert after == before


def test_token_rows_missing_rejected(
    gateway: RunningGateway, tiny_settings: Settings, tiny_model_path: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    from safetensors.torch import load, save

    files, _ = planning_token_lora(tiny_model_path, tmp_path / "lora")
    tensors = {key: value for key, value in load(files[WEIGHTS]).items() if "trainable_tokens_delta" not in key}
    response = post_archive(gateway, "yara", zip_bytes({**files, WEIGHTS: save(tensors)}))
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "invalid_adapter_weights"
    assert "trainable_tokens_delta" in error["message"]
    assert_nothing_registered(redis_client, tiny_settings, "yara")


def traversal_zip(files: Files) -> bytes:
    return zip_bytes({**files, "../evil": b"x"})


def absolute_zip(files: Files) -> bytes:
    return zip_bytes({**files, "/etc/evil": b"x"})


def duplicate_zip(files: Files) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in [*files.items(), (CONFIG, files[CONFIG])]:
            archive.writestr(name, content)
    return buffer.getvalue()


REJECTED_ARCHIVES: list[tuple[str, Callable[[Files], bytes], str]] = [
    (
        "pickle",
        lambda files: zip_bytes({CONFIG: files[CONFIG], "adapter_model.bin": b"\x80\x04"}),
        "unsupported_weights_format",
    ),
    (
        "pickle-beside",
        lambda files: zip_bytes({**files, "adapter_model.bin": b"\x80\x04"}),
        "unsupported_weights_format",
    ),
    ("traversal", traversal_zip, "invalid_archive"),
    ("absolute", absolute_zip, "invalid_archive"),
    ("extra-file", lambda files: zip_bytes({**files, "README.md": b"notes"}), "invalid_archive"),
    ("nested-folder", lambda files: zip_bytes(files, folder="a/b/"), "invalid_archive"),
    ("duplicate", duplicate_zip, "invalid_archive"),
    ("missing-weights", lambda files: zip_bytes({CONFIG: files[CONFIG]}), "invalid_archive"),
    ("symlink", lambda files: tar_gz_bytes(files, symlink="link"), "invalid_archive"),
    ("not-an-archive", lambda files: b"this is not an archive", "invalid_archive"),
    ("truncated-gzip", lambda files: tar_gz_bytes(files)[:200], "invalid_archive"),
    ("invalid-json", lambda files: zip_bytes({**files, CONFIG: b"{not json"}), "invalid_adapter_config"),
    (
        "missing-target",
        lambda files: zip_bytes(with_config(files, target_modules=["q_proj", "w_gate"])),
        "adapter_base_mismatch",
    ),
    ("dora", lambda files: zip_bytes(with_config(files, use_dora=True)), "unsupported_adapter"),
    ("not-lora", lambda files: zip_bytes(with_config(files, peft_type="IA3")), "unsupported_adapter"),
    ("pissa-init", lambda files: zip_bytes(with_config(files, init_lora_weights="pissa")), "unsupported_adapter"),
    ("lora-bias", lambda files: zip_bytes(with_config(files, lora_bias=True)), "unsupported_adapter"),
    (
        "output-layer-target",
        lambda files: zip_bytes(with_config(files, target_modules=["q_proj", "lm_head"])),
        "unsupported_adapter",
    ),
    (
        "tied-output-rows",
        lambda files: zip_bytes(with_config(files, trainable_token_indices={"lm_head": [1]})),
        "unsupported_adapter",
    ),
    ("rank-mismatch", lambda files: zip_bytes(with_config(files, r=8)), "invalid_adapter_weights"),
    (
        "weights-not-safetensors",
        lambda files: zip_bytes({**files, WEIGHTS: b"\x08" + bytes(7) + b"{}"}),
        "invalid_adapter_weights",
    ),
]


@pytest.mark.parametrize(
    ("builder", "code"), [case[1:] for case in REJECTED_ARCHIVES], ids=[case[0] for case in REJECTED_ARCHIVES]
)
def test_rejected_archive_leaves_nothing(
    gateway: RunningGateway,
    tiny_settings: Settings,
    good_files: Files,
    redis_client: redis.Redis,
    builder: Callable[[Files], bytes],
    code: str,
) -> None:
    response = post_archive(gateway, "tess", builder(good_files))
    error = response.json()["error"]

    assert response.status_code == 400, response.text
    assert error["code"] == code, error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert_nothing_registered(redis_client, tiny_settings, "tess")


def test_pickle_rejection_names_safetensors(gateway: RunningGateway, good_files: Files) -> None:
    body = zip_bytes({CONFIG: good_files[CONFIG], "adapter_model.bin": b"\x80\x04"})
    message = post_archive(gateway, "tess", body).json()["error"]["message"]

    assert "'adapter_model.bin'" in message
    assert "only safetensors is accepted" in message


def test_other_hidden_size_rejected(
    gateway: RunningGateway, tiny_settings: Settings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    files = save_lora(LlamaForCausalLM(config), tmp_path / "wide")
    response = post_archive(gateway, "uma", zip_bytes(files))
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "adapter_base_mismatch"
    assert "in_features 32" in error["message"]
    assert_nothing_registered(redis_client, tiny_settings, "uma")


def test_fewer_layers_than_targets_rejected(
    gateway: RunningGateway, tiny_settings: Settings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    files = save_lora(LlamaForCausalLM(config), tmp_path / "shallow")
    response = post_archive(gateway, "uma", zip_bytes(files))
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "adapter_base_mismatch"
    assert "'model.layers.1.self_attn.q_proj'" in error["message"]
    assert_nothing_registered(redis_client, tiny_settings, "uma")


def test_partner_ids_checked(gateway: RunningGateway, good_files: Files) -> None:
    anonymous = post_archive(gateway, "anonymous", zip_bytes(good_files))
    invalid = post_archive(gateway, "-bad", zip_bytes(good_files))
    convention = post_archive(gateway, "_convention", zip_bytes(good_files))

    assert anonymous.status_code == 400
    assert anonymous.json()["error"]["param"] == "partner_id"
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "partner_id"
    assert convention.status_code == 400


def test_rank_over_limit_rejected(
    start_gateway: Callable[..., tuple[RunningGateway, Settings]], good_files: Files, redis_client: redis.Redis
) -> None:
    gateway, settings = start_gateway(max_adapter_rank=2)
    response = post_archive(gateway, "vera", zip_bytes(good_files))
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "adapter_rank_too_large"
    assert "rank 4 is above the limit of 2" in error["message"]
    assert_nothing_registered(redis_client, settings, "vera")


def test_oversize_archive_rejected(
    start_gateway: Callable[..., tuple[RunningGateway, Settings]], good_files: Files, redis_client: redis.Redis
) -> None:
    gateway, settings = start_gateway(max_adapter_import_bytes=2000)
    archive = zip_bytes(good_files)
    compressed_bomb = gzip.compress(bytes(10_000_000))
    body_over_limit = bytes(2000 + 64 * 1024 + 1)

    archive_response = post_archive(gateway, "wim", archive)
    bomb_response = post_archive(gateway, "wim", compressed_bomb, "application/gzip")
    body_response = post_archive(gateway, "wim", body_over_limit)
    # A chunked body has no Content-Length, so only counting the chunks while reading can stop it.
    chunked_response = httpx.post(
        f"{gateway.base_url}/v1/partners/wim/adapters/import",
        content=iter([bytes(16 * 1024)] * 8),
        headers={"Content-Type": "application/zip"},
        timeout=60,
    )

    assert len(archive) < 2000 + 64 * 1024, "the archive itself fits the body limit"
    assert len(compressed_bomb) < 2000 + 64 * 1024
    assert "content-length" not in chunked_response.request.headers
    for response in (archive_response, bomb_response, body_response, chunked_response):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "archive_too_large"
    assert_nothing_registered(redis_client, settings, "wim")


def test_gzip_bomb_stops_at_limit() -> None:
    bomb = gzip.compress(bytes(50_000_000))

    with pytest.raises(ArchiveTooLargeError):
        read_adapter_archive(bomb, max_bytes=1_000_000)


def test_archive_dot_prefixed_names_accepted(good_files: Files) -> None:
    files = read_adapter_archive(tar_gz_bytes(good_files, folder="./"), max_bytes=10_000_000)

    assert files.config == good_files[CONFIG]
    assert files.weights == good_files[WEIGHTS]


def test_import_while_model_loads_returns_503(tiny_settings: Settings, good_files: Files) -> None:
    import threading

    from fastapi.testclient import TestClient

    from adapters.engine import LocalEngine
    from gateway.app import create_app

    release = threading.Event()

    def wait_for_release() -> str:
        release.wait(timeout=30)
        raise RuntimeError("the test model is never loaded")

    engine = LocalEngine(model_name=TINY_MODEL_NAME, model_path_loader=wait_for_release, max_loaded_adapters=1)
    with TestClient(create_app(tiny_settings, engine=engine)) as client:
        try:
            response = client.post(
                "/v1/partners/xena/adapters/import",
                content=zip_bytes(good_files),
                headers={"Content-Type": "application/zip"},
            )
        finally:
            # Shutting down waits for the loading thread, so it must end first.
            release.set()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_loading"
    assert response.headers["retry-after"] == "5"
    assert leftover_files(tiny_settings) == []


@pytest.mark.parametrize("member_type", [tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_special_members_rejected(good_files: Files, member_type: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in good_files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        special = tarfile.TarInfo("special")
        special.type = member_type
        special.linkname = CONFIG
        archive.addfile(special)

    with pytest.raises(InvalidArchiveError) as raised:
        read_adapter_archive(buffer.getvalue(), max_bytes=10_000_000)

    assert "'special'" in str(raised.value)
