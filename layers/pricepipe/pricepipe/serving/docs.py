"""The API's interactive docs without internet access: Swagger UI's files served by the API itself.

FastAPI's default ``/docs`` page makes the browser fetch Swagger UI from a CDN, so it is blank
offline (a laptop on the local cloud, a private network in front of the stage URL). Here the files
come from ``swagger-ui-dist``, pinned to an exact version in package.json: ``make`` copies the
files named in :data:`ASSETS` (and the licence) from ``node_modules/swagger-ui-dist`` into
``swagger_ui/`` beside this module (git-ignored), so the package and the layer built from it
(infrastructure/layers.py stages the package's files as they are) carry them. The API serves them
under ``/docs/`` (:data:`ASSET_PATHS`), and the page names them below the request's root path, so
they resolve behind API Gateway's stage prefix too.

No favicon: Swagger UI's is a PNG, which API Gateway returns as base64 text unless the API lists
binary media types; the page names an empty ``data:`` icon, so the browser asks nobody for one.

Standard library (and pricepipe.errors) only: the stacks and the local gateway read the paths, which must be public.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pricepipe.errors import ConfigurationError

ASSET_DIR = Path(__file__).with_name("swagger_ui")
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
OPENAPI_PATH = "/openapi.json"
# file name -> the Content-Type it is served with (text types: Mangum returns them as text, which
# API Gateway passes through without binary media types)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
ASSET_PATHS = tuple(f"{DOCS_PATH}/{name}" for name in ASSETS)
# Open without an API key: a browser loading the page sends no x-api-key header, for the page, the
# document or the page's own scripts (infrastructure/stacks/serving_stack.py, the local gateway).
PUBLIC_PATHS = (DOCS_PATH, OAUTH2_REDIRECT_PATH, OPENAPI_PATH, *ASSET_PATHS)
FAVICON = "data:,"
INSTALL_HINT = "run `make node_modules/.installed`, which copies them from the pinned swagger-ui-dist"


class AssetMissing(ConfigurationError, FileNotFoundError):
    """A Swagger UI file is not in the package (the build step that copies it has not run)."""


@cache
def asset(name: str) -> bytes:
    """One of :data:`ASSETS`' files, read once per process (on first use, not at cold start)."""
    if name not in ASSETS:
        raise KeyError(name)
    path = ASSET_DIR / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AssetMissing(f"Swagger UI's {name} is not in {ASSET_DIR}: {INSTALL_HINT}") from None
