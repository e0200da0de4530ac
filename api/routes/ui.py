"""The dashboard at /ui: static files from api/ui/, served by the API itself so that it works
offline and needs no build step. The page signs in with an API key and calls the JSON routes;
these files hold no data, so they are public."""

from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import file
from sanic_ext import openapi

from api.errors import NotFound
from api.scopes import PUBLIC, allow

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page may load its own files and call this API, nothing else (no CDN, no inline script).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

bp = Blueprint("ui")


# Sanic matches "/ui" and "/ui/" alike; the page names its files by absolute path.
@bp.get("/ui")
@openapi.exclude()  # pages, not API
@allow(PUBLIC)  # the page and its files hold no data; the API calls behind them are checked
async def ui_index(request: Request):
    return await file(UI_DIR / "index.html", mime_type=TYPES[".html"], headers=HEADERS)


@bp.get("/ui/<name:str>")
@openapi.exclude()  # pages, not API
@allow(PUBLIC)
async def ui_asset(request: Request, name: str):
    path = UI_DIR / name
    # One flat directory: a name is a file in it or nothing (no "..", no sub-paths).
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise NotFound(f"no dashboard file {name}")
    return await file(path, mime_type=TYPES[path.suffix], headers=HEADERS)
