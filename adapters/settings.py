"""Settings shared by the gateway, the trainer worker and the command line.

Values come from a YAML file (``--config`` or ``CONVENTION_GATEWAY_CONFIG``) and are overridden by environment
variables named ``CONVENTION_GATEWAY_<FIELD>`` (nested fields joined with ``__``). The Redis location is the
standard ``REDIS_URL``. The settings live in the lowest package so that every package can read them without
importing upwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
LOCAL_PROVIDER = "local"
CONFIG_ENV_VAR = "CONVENTION_GATEWAY_CONFIG"


def _user_dir(env_var: str, fallback: str) -> Path:
    base = os.environ.get(env_var) or str(Path.home() / fallback)
    return Path(base) / "convention-gateway"


ENV_REFERENCE_PREFIX = "os.environ/"
# Providers whose API is OpenAI's own wire format: the gateway forwards to them with plain HTTP instead of
# litellm, whose per-request overhead is several milliseconds of CPU.
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_compatible", "lm_studio", "vllm"})


class BackendParams(BaseModel):
    """Backend of one served model, in the shape of litellm's ``litellm_params``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="'local/<builtin | Hugging Face id | folder>' for the local engine, or a litellm provider string "
        "such as 'openai/gpt-4o-mini', 'hosted_vllm/<model>' or 'anthropic/<model>'."
    )
    api_base: str | None = Field(default=None, description="Base URL of the upstream API, e.g. http://host:8000/v1.")
    api_key: str | None = Field(
        default=None, description="'os.environ/<NAME>': the key is read from that environment variable at start-up."
    )
    timeout: float = Field(
        default=600.0, gt=0, description="Seconds to wait for the whole response; for a stream, for each read."
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries on connection errors and 429/5xx statuses.")

    @field_validator("model")
    @classmethod
    def _check_model(cls, model: str) -> str:
        provider, _, target = model.partition("/")
        if not provider or not target:
            raise ValueError(
                f"invalid backend model {model!r}: use '<provider>/<model>', e.g. 'local/{DEFAULT_MODEL_NAME}'"
            )
        return model

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, api_key: str | None) -> str | None:
        if api_key is not None and not api_key.startswith(ENV_REFERENCE_PREFIX):
            raise ValueError("api_key must name an environment variable as 'os.environ/<NAME>', never the key itself")
        return api_key

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def target(self) -> str:
        return self.model.split("/", 1)[1]

    @property
    def is_local(self) -> bool:
        return self.provider == LOCAL_PROVIDER

    @property
    def is_openai_compatible(self) -> bool:
        return self.provider in OPENAI_COMPATIBLE_PROVIDERS

    def resolve_api_key(self) -> str | None:
        """Returns the key from the environment variable named by ``api_key``; raises when it is not set."""
        if self.api_key is None:
            return None
        name = self.api_key.removeprefix(ENV_REFERENCE_PREFIX)
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"environment variable {name} (named by api_key of {self.model!r}) is not set")
        return value


class ModelEntry(BaseModel):
    """One entry of ``model_list``: the name clients send and the backend that serves it."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1)
    litellm_params: BackendParams


def _default_model_list() -> list[ModelEntry]:
    backend = BackendParams(model=f"{LOCAL_PROVIDER}/{DEFAULT_MODEL_NAME}")
    return [ModelEntry(model_name=DEFAULT_MODEL_NAME, litellm_params=backend)]


class TrainingSettings(BaseModel):
    """Hyperparameters of both training stages, sized for the default model on a CPU.

    docs/training.md lists them with the values for 8B models on a GPU.
    """

    min_pairs: int = Field(default=4, ge=1, description="Fewer mined preference pairs than this fails the job.")
    sft_epochs: int = Field(default=2, ge=0, description="Epochs of stage 1 (planning token SFT); 0 skips it.")
    sft_learning_rate: float = Field(default=1e-3, gt=0, description="Learning rate of stage 1's LoRA weights.")
    token_learning_rate: float = Field(
        default=1e-2, gt=0, description="Learning rate of the planning token's embedding row in stage 1."
    )
    divergence_weight: float = Field(
        default=4.0, ge=0, description="Weight of the divergence from the starting model in stage 1's loss."
    )
    jsd_beta: float = Field(
        default=0.5, ge=0, le=1, description="Interpolation of the generalised Jensen-Shannon divergence."
    )
    epochs: int = Field(default=2, ge=1, description="Epochs of stage 2 (APO-zero preference optimisation).")
    batch_size: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0, description="Learning rate of stage 2.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the APO-zero preference loss.")
    checkpoint_steps: int = Field(
        default=20, ge=1, description="Steps between checkpoints; a restarted job resumes from the last one."
    )
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_length: int = Field(default=256, ge=32, description="Token budget of prompt plus completion.")
    max_prompt_tokens: int = Field(
        default=128,
        ge=16,
        description="Token budget of a pair's prompt: the most recent messages plus the one with the first mention.",
    )
    seed: int = 0


class TrainingPolicy(BaseModel):
    """When the gateway starts a partner's training job by itself."""

    auto_training: bool = Field(default=True, description="Start jobs automatically; partners can opt out.")
    min_new_turns: int = Field(default=50, ge=1, description="Trainable turns since the partner's last job.")
    cooldown_s: int = Field(default=3600, ge=0, description="Minimum seconds between two jobs of one partner.")
    max_attempts: int = Field(
        default=3,
        ge=0,
        description="Times a job whose worker was lost is requeued before it fails with worker_lost "
        "(env CONVENTION_GATEWAY_TRAINING_POLICY__MAX_ATTEMPTS).",
    )


class Settings(BaseSettings):
    """Everything a gateway or worker process needs to start."""

    model_config = SettingsConfigDict(env_prefix="CONVENTION_GATEWAY_", env_nested_delimiter="__", extra="forbid")

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "CONVENTION_GATEWAY_REDIS_URL", "redis_url"),
    )
    key_prefix: str = Field(default="cg", description="Prefix of every Redis key this product writes.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_list: list[ModelEntry] = Field(default_factory=_default_model_list, min_length=1)
    model_cache_dir: Path = Field(default_factory=lambda: _user_dir("XDG_CACHE_HOME", ".cache") / "models")
    artifact_dir: Path = Field(default_factory=lambda: _user_dir("XDG_DATA_HOME", ".local/share") / "adapters")
    queue_name: str = "convention-training"
    job_timeout_s: int = Field(default=3600, ge=10)
    max_loaded_adapters: int = Field(
        default=8, ge=1, description="Adapters kept loaded; the least recently used unused ones are unloaded beyond."
    )
    max_batch_size: int = Field(
        default=16, ge=1, description="Sequences decoded together; more requests wait for a free row."
    )
    default_max_tokens: int = Field(default=256, ge=1)
    max_pending_requests: int = Field(
        default=32, ge=1, description="Local requests generating or waiting; more are rejected with 503."
    )
    max_adapter_import_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="Maximum total uncompressed size in bytes of an imported adapter archive. The request body may "
        "exceed it only by a small allowance for archive and multipart headers.",
    )
    max_request_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; larger requests get a 413. Adapter imports have their own limit.",
    )
    max_adapter_rank: int = Field(default=64, ge=1, description="Maximum LoRA rank r of an imported adapter.")
    anonymous_partner_id: str = "anonymous"
    conversation_index_ttl_s: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="How long a conversation prefix keeps mapping to its session.",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    training_policy: TrainingPolicy = Field(default_factory=TrainingPolicy)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the YAML file, whose values arrive as init arguments.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _check_model_list(self) -> Settings:
        names = [entry.model_name for entry in self.model_list]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model_list names {', '.join(duplicates)} more than once")
        local = [entry for entry in self.model_list if entry.litellm_params.is_local]
        if len(local) > 1:
            # TODO: serve several local base models at once; the engine loads one base model today.
            raise ValueError("model_list has more than one local/ entry: this version serves one local model")
        return self

    @property
    def local_model(self) -> ModelEntry | None:
        """Returns the entry served by the local engine, or None when every model is upstream."""
        return next((entry for entry in self.model_list if entry.litellm_params.is_local), None)

    def require_local_model(self) -> ModelEntry:
        """Returns the local entry; raises ValueError when model_list has none (training needs one)."""
        entry = self.local_model
        if entry is None:
            raise ValueError("model_list has no local/ entry; training and adapters need a local base model")
        return entry

    def find_model(self, name: str) -> ModelEntry | None:
        return next((entry for entry in self.model_list if entry.model_name == name), None)

    @property
    def redis_url_redacted(self) -> str:
        """Returns the Redis URL with any password replaced, for logs."""
        parts = urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Read the YAML config file (if any) and apply environment overrides."""
    path = config_file or os.environ.get(CONFIG_ENV_VAR)
    values: dict[str, Any] = {}
    if path:
        values = _read_yaml(Path(path))

    return Settings(**values)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"config file not found: {path}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error

    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must contain a mapping at the top level")
    return loaded
