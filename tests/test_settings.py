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


def test_upstream_provider_rejected(tmp_path: Path) -> None:
    config = "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: openai/gpt-4o\n"

    with pytest.raises(ValueError, match="openai/gpt-4o"):
        load_settings(write_config(tmp_path, config))


def test_unknown_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prot"):
        load_settings(write_config(tmp_path, "prot: 1\n"))


def test_missing_config_file_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "absent.yaml")
