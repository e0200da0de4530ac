"""Who is calling. Every authenticated route resolves the caller to a `Principal` here.

Three ways in, tried in order (the spec's "API Authorization"):
  1. `X-Kelpie-Key` — a Kelpie API key (this module);
  2. `Salad-Api-Key` + `Salad-Organization` + `Salad-Project` — a Salad user;
  3. `Authorization: Bearer <JWT>` + `Salad-Project` — a worker's instance-metadata token.
The Salad schemes register themselves in `SCHEMES` (see api/salad_auth.py when present).
No credentials at all → 401; credentials that do not check out → 403.
"""

import functools
import time

from sanic import Request

from api import db, users
from api.errors import Forbidden, Unauthorized
from api.queue import Principal


class KeyCache:
    """Verified API keys, kept for a few seconds so a heartbeat costs one database write and
    no read. A deleted key stops working within `ttl` seconds on every process."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        if len(self._entries) > 10000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._entries.clear()


async def kelpie_key(request: Request) -> Principal | None:
    key = request.headers.get("x-kelpie-key")
    if not key:
        return None
    cache: KeyCache = request.app.ctx.key_cache
    key_hash = users.hash_key(key)
    principal = cache.get(key_hash)
    if principal is None:
        user = await db.run(users.find_by_key, key)
        if user is None:
            raise Forbidden("invalid X-Kelpie-Key")
        principal = Principal(user_id=user.id, is_admin=bool(user.is_admin), name=user.name)
        cache.put(key_hash, principal)
    return principal


# Each scheme returns a Principal, None when its headers are absent, or raises 400/403/503.
SCHEMES = [kelpie_key]


async def authenticate(request: Request) -> Principal:
    for scheme in SCHEMES:
        principal = await scheme(request)
        if principal is not None:
            return principal
    raise Unauthorized("no credentials: send X-Kelpie-Key, Salad-Api-Key or a Bearer token")


def authenticated(handler):
    """Route decorator: resolves the caller into `request.ctx.principal` first."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args, **kwargs):
        request.ctx.principal = await authenticate(request)
        return await handler(request, *args, **kwargs)

    return wrapper


def admin_only(handler):
    """Route decorator: only the administrator may call this."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args, **kwargs):
        principal = await authenticate(request)
        if not principal.is_admin:
            raise Forbidden("administrator only")
        request.ctx.principal = principal
        return await handler(request, *args, **kwargs)

    return wrapper
