"""Who is calling. Every authenticated route resolves the caller to a `Principal` here.

Three ways in, tried in order (the spec's "API Authorization"):
  1. `X-Kelpie-Key` — a Kelpie API key (this module, keys in api/keys.py);
  2. `Salad-Api-Key` + `Salad-Organization` + `Salad-Project` — a Salad user;
  3. `Authorization: Bearer <JWT>` + `Salad-Project` — a worker's instance-metadata token.
The Salad schemes register themselves in `SCHEMES` (see api/salad_auth.py).
No credentials at all → 401; credentials that do not check out → 403; a client address with
too many failed attempts → 429 (api/ratelimit.py). Which routes a principal may then call is
api/scopes.py's business.
"""

from sanic import Request

from api import db, keys
from api.errors import Forbidden, Unauthorized
from api.principal import Principal
from api.ttl_cache import TtlCache

CREDENTIAL_HEADERS = ("x-kelpie-key", "salad-api-key", "salad-organization", "salad-project",
                      "authorization")


def key_cache(ttl: float) -> TtlCache[str, Principal]:
    """Principals of verified keys by key hash, for the worker protocol's hot routes only
    (claims and heartbeats): there the route's own statement checks that the key still exists
    (api/sql.py), so a cached principal costs no extra read and still stops working the moment
    its key is revoked, in every process. Every other route reads the key afresh."""
    return TtlCache(ttl)


async def kelpie_key(request: Request) -> Principal | None:
    key = request.headers.get("x-kelpie-key")
    if not key:
        return None
    cache: TtlCache[str, Principal] = request.app.ctx.key_cache
    key_hash = keys.hash_key(key)
    if getattr(request.ctx, "key_checked_by_statement", False):
        principal = cache.get(key_hash)
        if principal is not None:
            return principal
    principal = await db.run(keys.authenticate, key)
    if principal is None:
        cache.drop(key_hash)
        raise Forbidden("invalid X-Kelpie-Key")
    cache.put(key_hash, principal)
    keys.seen_valid(key_hash)
    return principal


# Each scheme returns a Principal, None when its headers are absent, or raises 400/403/503.
SCHEMES = [kelpie_key]


def _check_encoding(request: Request) -> None:
    # Credentials are ASCII by construction; anything else (latin-1 bytes, say) is nobody's key,
    # refused here before a hash or a URL sees it.
    for name in CREDENTIAL_HEADERS:
        value = request.headers.get(name)
        if value is not None and not (value.isascii() and value.isprintable()):
            raise Unauthorized(f"{name} must be printable ASCII", field=name)


async def authenticate(request: Request) -> Principal:
    limiter = request.app.ctx.auth_limiter
    client = request.client_ip or request.ip or "unknown"
    limiter.check(client)
    try:
        _check_encoding(request)
        for scheme in SCHEMES:
            principal = await scheme(request)
            if principal is not None:
                return principal
    except (Unauthorized, Forbidden):
        limiter.failed(client)
        raise
    raise Unauthorized("no credentials: send X-Kelpie-Key, Salad-Api-Key or a Bearer token")
