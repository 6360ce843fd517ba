"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapters.base_model import resolve_model_path
from adapters.engine import LocalEngine
from adapters.settings import Settings
from gateway import (
    routes_adapter_import,
    routes_dashboard,
    routes_health,
    routes_jobs,
    routes_metrics,
    routes_openai,
    routes_partners,
    routes_tokenize,
)
from gateway.body_limit import BodySizeLimitMiddleware
from gateway.errors import install_error_handlers
from gateway.routes_adapter_import import IMPORT_PATH_SUFFIX
from gateway.services import Services

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> LocalEngine | None:
    entry = settings.local_model
    if entry is None:
        return None
    return LocalEngine(
        model_name=entry.model_name,
        model_path_loader=lambda: resolve_model_path(entry.litellm_params.target, settings.model_cache_dir),
        max_loaded_adapters=settings.max_loaded_adapters,
        max_batch_size=settings.max_batch_size,
        max_pending_requests=settings.max_pending_requests,
    )


async def _load_engine(engine: LocalEngine) -> None:
    try:
        await asyncio.to_thread(engine.load)
    except Exception as error:
        engine.load_error = f"{type(error).__name__}: {error}"
        logger.exception("Engine: loading model %s failed; /readyz stays not ready", engine.model_name)


def create_app(settings: Settings, *, engine: LocalEngine | None = None) -> FastAPI:
    """Builds the gateway; the model loads in the background after start-up, and /readyz reports when it is done."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, engine or build_engine(settings))
        app.state.services = services
        services.sessions.on_turn_stored = app.state.prometheus.observe_turn
        services.turn_writer.start()
        engine_to_load = services.engine if services.engine is not None and not services.engine.ready else None
        loading = asyncio.create_task(_load_engine(engine_to_load)) if engine_to_load is not None else None
        served = ", ".join(entry.model_name for entry in settings.model_list)
        logger.info("Gateway: started (Redis %s, models %s)", settings.redis_url_redacted, served)
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            await services.close()
            logger.info("Gateway: stopped")

    app = FastAPI(title="convention-gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    for module in (routes_openai, routes_partners, routes_adapter_import, routes_jobs, routes_health, routes_tokenize):
        app.include_router(module.router)
    app.include_router(routes_dashboard.router)
    # Added before the metrics middleware, so that it runs inside it and rejected bodies are counted too.
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes, exempt_suffixes=(IMPORT_PATH_SUFFIX,)
    )
    routes_metrics.install(app, settings)
    return app
