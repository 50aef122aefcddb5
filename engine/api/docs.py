"""``/docs``: Swagger UI over ``/openapi.json``, with every file served by this server.

FastAPI's own ``/docs`` loads Swagger UI's script and stylesheet from a CDN
(cdn.jsdelivr.net) and its favicon from fastapi.tiangolo.com. So every reader's browser
tells those hosts where our API runs, the page stays blank on a network without internet,
and a script we never saw would run on the API's origin. Here the page loads the copy of
Swagger UI that ships in the ``fastapi-offline`` package (a PyPI dependency, pinned to a major
version), served from ``/docs/assets/``. Swagger UI's online validator, which would send the
spec's address to validator.swagger.io, is off. A Content-Security-Policy lets the page load
from and connect to this origin only, so a future Swagger UI that fetches something from
elsewhere is blocked, not obeyed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from .problems import Problem

__all__ = ["ASSETS", "router"]

router = APIRouter(include_in_schema=False)

ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
"""The files /docs loads, by name: nothing else under /docs/assets/ is served."""

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _csp(page: str) -> str:
    """Only this origin, plus the page's own inline script (Swagger UI's start), by hash."""
    digests = (hashlib.sha256(script.encode()).digest() for script in _INLINE_SCRIPT.findall(page))
    hashes = " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """The interactive API docs; the paths carry the app's root path, as FastAPI's do."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        oauth2_redirect_url=None,  # the API takes a bearer key, never an OAuth2 login
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    page.headers["Content-Security-Policy"] = _csp(html)
    return page


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> Response:
    if name not in ASSETS:
        raise Problem(404, "Not found")
    return FileResponse(
        ASSET_DIR / name,
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=3600"},
    )
