"""Errors raised while importing an adapter archive, each with the error code sent to the client."""

from __future__ import annotations

from typing import ClassVar


class AdapterImportError(ValueError):
    """A rejected adapter upload. The message names what is invalid and how to fix it."""

    code: ClassVar[str] = "invalid_adapter"


class InvalidArchiveError(AdapterImportError):
    """The upload is not a readable zip or tar archive, or its members break the layout rules."""

    code = "invalid_archive"


class ArchiveTooLargeError(AdapterImportError):
    """The request body or the archive's uncompressed content is larger than the configured limit."""

    code = "archive_too_large"


class UnsupportedWeightsFormatError(AdapterImportError):
    """The archive contains pickle-based weights, which can run code when loaded."""

    code = "unsupported_weights_format"


class InvalidAdapterConfigError(AdapterImportError):
    """``adapter_config.json`` is not valid JSON or lacks a required field."""

    code = "invalid_adapter_config"


class UnsupportedAdapterError(AdapterImportError):
    """The adapter uses a PEFT method or option that this gateway does not serve."""

    code = "unsupported_adapter"


class AdapterRankTooLargeError(AdapterImportError):
    """The adapter's LoRA rank is above ``max_adapter_rank``."""

    code = "adapter_rank_too_large"


class AdapterBaseMismatchError(AdapterImportError):
    """The adapter's modules or tensor shapes do not fit the served base model."""

    code = "adapter_base_mismatch"


class InvalidAdapterWeightsError(AdapterImportError):
    """``adapter_model.safetensors`` is unreadable or inconsistent with ``adapter_config.json``."""

    code = "invalid_adapter_weights"
