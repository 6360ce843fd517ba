"""Importing a partner's adapter trained elsewhere: ``POST /v1/partners/{partner_id}/adapters/import``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from adapters.engine import LocalEngine
from adapters.import_errors import AdapterImportError, ArchiveTooLargeError
from adapters.importing import import_adapter, register_imported_adapter
from adapters.model_layout import describe_model
from gateway.chat import check_loaded
from gateway.errors import APIError
from gateway.partners import validate_id
from gateway.routes_partners import adapter_object
from gateway.services import Services, get_services

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/partners", tags=["partners"])
# The import route streams its body against max_adapter_import_bytes, so the general body limit skips it.
IMPORT_PATH_SUFFIX = "/adapters/import"
ServicesDep = Annotated[Services, Depends(get_services)]

# Room above max_adapter_import_bytes for multipart headers and archive metadata. Larger bodies are rejected
# while they are read, before the archive is opened.
REQUEST_BODY_ALLOWANCE_BYTES = 64 * 1024
MULTIPART_FILE_FIELD = "file"
# Form fields other than the file, such as OpenAI's "purpose", are ignored up to this count.
MAX_MULTIPART_FIELDS = 16
ARCHIVE_MEDIA_TYPES = ("application/zip", "application/gzip", "application/x-tar")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            **{media_type: _BINARY for media_type in ARCHIVE_MEDIA_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {MULTIPART_FILE_FIELD: {"type": "string", "format": "binary"}},
                    "required": [MULTIPART_FILE_FIELD],
                }
            },
        },
    }
}


@router.post("/{partner_id}" + IMPORT_PATH_SUFFIX, openapi_extra=_REQUEST_BODY_DOC)
async def import_partner_adapter(
    partner_id: str, request: Request, services: ServicesDep, activate: bool = True
) -> dict[str, Any]:
    """Registers an uploaded PEFT LoRA adapter archive as the partner's next adapter version.

    The body is a zip or tar.gz archive of ``adapter_config.json`` and ``adapter_model.safetensors``, sent as
    is or as the multipart field ``file``. The new version becomes active unless ``activate`` is false. Returns the
    adapter object, or a 400 for a rejected archive (413 when it is too large).
    """
    _check_partner(partner_id, services)
    engine = _ready_engine(services)
    settings = services.settings
    archive = await read_upload(request, max_bytes=settings.max_adapter_import_bytes + REQUEST_BODY_ALLOWANCE_BYTES)

    # The generation thread may wrap layers of the model in PEFT layers meanwhile, which does not change the layout.
    layout = await asyncio.to_thread(describe_model, engine.model, planning_token_id=engine.planning_token_id)
    staging_dir = settings.artifact_dir / f".import-{uuid.uuid4().hex}"
    try:
        imported = await asyncio.to_thread(
            import_adapter,
            archive,
            layout=layout,
            max_bytes=settings.max_adapter_import_bytes,
            max_rank=settings.max_adapter_rank,
            staging_dir=staging_dir,
        )
    except AdapterImportError as error:
        logger.info("Partner %s: adapter import rejected (%s): %s", partner_id, error.code, error)
        raise _rejection(error) from error

    adapter = await asyncio.to_thread(
        register_imported_adapter,
        imported,
        registry=services.registry,
        artifact_dir=settings.artifact_dir,
        partner_id=partner_id,
        base_model=engine.model_name,
        activate=activate,
    )
    active = await asyncio.to_thread(services.registry.active_version, partner_id)
    return adapter_object(adapter, active)


def _check_partner(partner_id: str, services: Services) -> None:
    validate_id(partner_id, param="partner_id", kind="partner id")
    if partner_id == services.settings.anonymous_partner_id:
        raise APIError(
            400,
            f"partner id {partner_id!r} is reserved for requests without one and cannot have adapters; "
            "import the adapter for a named partner",
            param="partner_id",
            code="invalid_value",
        )


def _ready_engine(services: Services) -> LocalEngine:
    engine = services.engine
    if engine is None:
        raise APIError(
            400, "no local/ model is configured in model_list, so there is no base model for an adapter", param="model"
        )
    check_loaded(engine)
    return engine


# NOTE: every import in progress keeps its archive and the unpacked files in memory, up to about twice
# max_adapter_import_bytes, and concurrent imports are not limited.
async def read_upload(request: Request, *, max_bytes: int) -> bytes:
    """Returns the uploaded archive: the raw body, or the ``file`` field of a multipart form.

    Raises a 413 APIError as soon as the body exceeds ``max_bytes``, so an oversize body is never held in memory.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _rejection(_body_too_large(max_bytes))

    chunks = _capped(request.stream(), max_bytes)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart_file(request, chunks)

    body = bytearray()
    async for chunk in chunks:
        body += chunk
    return bytes(body)


async def _capped(stream: AsyncGenerator[bytes, None], max_bytes: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise _rejection(_body_too_large(max_bytes))
        yield chunk


async def _read_multipart_file(request: Request, chunks: AsyncGenerator[bytes, None]) -> bytes:
    parser = MultiPartParser(request.headers, chunks, max_files=1, max_fields=MAX_MULTIPART_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise APIError(
            400,
            f"the multipart body cannot be read ({error.message}); send one file in the field '{MULTIPART_FILE_FIELD}'",
            param=MULTIPART_FILE_FIELD,
            code="invalid_multipart",
        ) from error

    try:
        upload = form.get(MULTIPART_FILE_FIELD)
        if not isinstance(upload, UploadFile):
            raise APIError(
                400,
                f"the multipart body has no file field '{MULTIPART_FILE_FIELD}'; send the archive in that field",
                param=MULTIPART_FILE_FIELD,
                code="missing_file",
            )
        return await upload.read()
    finally:
        await form.close()


def _body_too_large(max_bytes: int) -> ArchiveTooLargeError:
    return ArchiveTooLargeError(
        f"the request body is larger than {max_bytes} bytes; upload a smaller adapter or raise max_adapter_import_bytes"
    )


def _rejection(error: AdapterImportError) -> APIError:
    status = 413 if isinstance(error, ArchiveTooLargeError) else 400
    return APIError(status, str(error), param=MULTIPART_FILE_FIELD, code=error.code)
