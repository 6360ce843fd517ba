"""Importing a PEFT LoRA adapter trained elsewhere: checks against the served base model, then registration.

The adapter is not loaded during the import. Instead, the checks cover what PEFT needs to load it into the served
model later: the config's options, the targeted modules and every tensor's shape. ``adapters.import_archive``
reads the archive, ``adapters.import_config`` checks the config and ``adapters.import_weights`` the tensors,
against the base model's ``adapters.model_layout``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from adapters.import_archive import CONFIG_NAME, WEIGHTS_NAME, read_adapter_archive
from adapters.import_config import (
    configured_targets,
    parse_adapter_config,
    peft_config,
    select_target_modules,
    select_token_targets,
)
from adapters.import_weights import check_tensors, read_tensor_infos
from adapters.model_layout import BaseModelLayout
from adapters.registry import AdapterRegistry, AdapterVersion, adapter_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedAdapter:
    """A validated adapter whose files are staged in ``folder``, ready to be moved to its version folder."""

    folder: Path
    rank: int
    target_modules: list[str]
    tensor_count: int


def import_adapter(
    archive: bytes, *, layout: BaseModelLayout, max_bytes: int, max_rank: int, staging_dir: Path
) -> ImportedAdapter:
    """Validates an adapter archive against the base model and stages its two files in ``staging_dir``.

    Raises an AdapterImportError subclass for every rejection, after removing ``staging_dir``.
    """
    files = read_adapter_archive(archive, max_bytes=max_bytes)
    raw_config = parse_adapter_config(files.config, max_rank=max_rank)
    lora_config = peft_config(raw_config)
    targets = select_target_modules(lora_config, layout)
    token_targets = select_token_targets(lora_config, layout)

    staging_dir.mkdir(parents=True)
    try:
        (staging_dir / CONFIG_NAME).write_bytes(files.config)
        (staging_dir / WEIGHTS_NAME).write_bytes(files.weights)
        tensors = read_tensor_infos(staging_dir / WEIGHTS_NAME)
        check_tensors(tensors, lora_config, layout, targets, token_targets)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise

    return ImportedAdapter(
        folder=staging_dir,
        rank=int(raw_config["r"]),
        target_modules=configured_targets(raw_config["target_modules"]),
        tensor_count=len(tensors),
    )


def register_imported_adapter(
    imported: ImportedAdapter,
    *,
    registry: AdapterRegistry,
    artifact_dir: Path,
    partner_id: str,
    base_model: str,
    activate: bool,
) -> AdapterVersion:
    """Moves the staged files to the partner's next version folder and registers that version."""
    try:
        version = registry.allocate_version(partner_id)
        final = adapter_folder(artifact_dir, partner_id, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        imported.folder.rename(final)
    except BaseException:
        shutil.rmtree(imported.folder, ignore_errors=True)
        raise

    adapter = AdapterVersion(
        partner_id=partner_id,
        version=version,
        base_model=base_model,
        path=str(final),
        created_at=int(time.time()),
        metrics={"imported": True, "rank": imported.rank, "target_modules": imported.target_modules},
    )
    try:
        registry.register(adapter, activate=activate)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    logger.info("Partner %s: adapter version %s imported (rank %d)", partner_id, version, imported.rank)
    return adapter
