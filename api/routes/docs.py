"""Swagger UI at /docs with its files served from the pinned swagger-ui-bundle package.

sanic-ext's own page loads Swagger UI from a CDN, and its /docs/oauth2-redirect.html fetches a
page from one on every request; neither works offline and the second makes the server reach
out to the internet. `configure` points sanic-ext at our page and the local files; the
middleware answers the redirect page from the package instead. Public: the document holds no
data."""

from pathlib import Path

from sanic import Blueprint, Request, Sanic
from sanic.response import file
from sanic_ext import openapi
from swagger_ui_bundle import swagger_ui_path

from api.errors import NotFound
from api.scopes import PUBLIC, allow

ASSETS_URL = "/docs/assets"
PAGE = Path(__file__).resolve().parent.parent / "openapi_ui" / "swagger.html"
OAUTH2_REDIRECT = "/oauth2-redirect.html"
# The files the page loads (and the redirect page), nothing else of the package.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

bp = Blueprint("docs_assets")


def configure(app: Sanic) -> None:
    """Call before sanic-ext's Extend(app): it builds the /docs blueprint from this config."""
    app.config.OAS_PATH_TO_SWAGGER_HTML = str(PAGE)
    app.config.OAS_UI_SWAGGER_CDN_URL = ASSETS_URL
    app.config.OAS_UI_SWAGGER_OAUTH2_REDIRECT = OAUTH2_REDIRECT
    app.config.OAS_UI_SWAGGER_HTML_TITLE = "Kelpie API"
    redirect_path = app.config.OAS_URL_PREFIX.rstrip("/") + OAUTH2_REDIRECT

    @app.on_request
    async def local_oauth2_redirect(request: Request):
        if request.path == redirect_path:
            return await file(Path(swagger_ui_path) / "oauth2-redirect.html",
                              mime_type="text/html; charset=utf-8")


@bp.get(ASSETS_URL + "/<name:str>")
@openapi.exclude()
@allow(PUBLIC)
async def asset(request: Request, name: str):
    if name not in ASSETS:
        raise NotFound(f"no documentation file {name}")
    return await file(Path(swagger_ui_path) / name, mime_type=ASSETS[name],
                      headers={"Cache-Control": "public, max-age=86400"})
