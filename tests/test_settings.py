"""Settings from YAML with environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.settings import load_settings


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_values_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVENTION_GATEWAY_PORT", raising=False)
    settings = load_settings(write_config(tmp_path, "port: 9100\ntraining:\n  epochs: 7\n"))

    assert settings.port == 9100
    assert settings.training.epochs == 7


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVENTION_GATEWAY_PORT", "9200")
    monkeypatch.setenv("CONVENTION_GATEWAY_TRAINING__EPOCHS", "2")
    settings = load_settings(write_config(tmp_path, "port: 9100\ntraining:\n  epochs: 7\n"))

    assert settings.port == 9200
    assert settings.training.epochs == 2


def test_redis_url_from_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6390/3")

    assert load_settings(None).redis_url == "redis://example.invalid:6390/3"


def test_redis_password_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://user:s3cret@localhost:6379/0")

    assert "s3cret" not in load_settings(None).redis_url_redacted


def test_upstream_entry_accepted(tmp_path: Path) -> None:
    config = (
        "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: openai/gpt-4o\n"
        "      api_base: http://127.0.0.1:9999/v1\n      api_key: os.environ/UPSTREAM_KEY\n"
    )
    entry = load_settings(write_config(tmp_path, config)).model_list[0]

    assert entry.litellm_params.is_openai_compatible is True
    assert entry.litellm_params.api_key == "os.environ/UPSTREAM_KEY"


def test_literal_api_key_rejected(tmp_path: Path) -> None:
    config = (
        "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: sk-123\n"
    )

    with pytest.raises(ValueError, match="os.environ/"):
        load_settings(write_config(tmp_path, config))


def test_api_key_read_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env")
    config = (
        "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: openai/x\n"
        "      api_key: os.environ/UPSTREAM_KEY\n"
    )
    params = load_settings(write_config(tmp_path, config)).model_list[0].litellm_params

    assert params.resolve_api_key() == "sk-from-env"


def test_duplicate_model_names_rejected(tmp_path: Path) -> None:
    entry = "  - model_name: same\n    litellm_params:\n      model: openai/x\n"

    with pytest.raises(ValueError, match="more than once"):
        load_settings(write_config(tmp_path, "model_list:\n" + entry + entry))


def test_two_local_models_rejected(tmp_path: Path) -> None:
    config = (
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: local/a\n"
        "  - model_name: b\n    litellm_params:\n      model: local/b\n"
    )

    with pytest.raises(ValueError, match="one local model"):
        load_settings(write_config(tmp_path, config))


def test_unknown_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prot"):
        load_settings(write_config(tmp_path, "prot: 1\n"))


def test_missing_config_file_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "absent.yaml")
