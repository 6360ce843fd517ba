"""The ``/dashboard`` web page: static HTML, CSS and JavaScript that read the JSON API in the browser.

The files ship as package data of ``gateway`` (folder ``gateway/dashboard``), so an installed wheel serves the
same page as a source checkout. The page loads nothing from other hosts.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.errors import APIError

logger = logging.getLogger(__name__)
router = APIRouter(tags=["dashboard"])

ASSET_MEDIA_TYPES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "sections.js": "text/javascript; charset=utf-8",
}

# The page loads only its own files and calls only the gateway's JSON API, so every allowed source is 'self'.
# Inline scripts are blocked as well, so markup injected from an API string could not run code.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def read_asset(name: str) -> bytes:
    """Reads one file of the dashboard once per process, because package data does not change while it runs."""
    return (files("gateway") / "dashboard" / name).read_bytes()


@router.get("/dashboard", include_in_schema=False)
def dashboard_page() -> Response:
    return Response(read_asset("index.html"), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/dashboard/assets/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> Response:
    media_type = ASSET_MEDIA_TYPES.get(name)
    if media_type is None:
        logger.debug("Dashboard: asset %r not found", name)
        known = ", ".join(sorted(ASSET_MEDIA_TYPES))
        raise APIError(404, f"dashboard asset {name!r} not found; the assets are {known}", param="name")
    return Response(read_asset(name), media_type=media_type, headers=SECURITY_HEADERS)
