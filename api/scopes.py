"""Which principals may call which route: one `@allow(...)` on every handler, one check here.

`admin` is the administrator, `user` a tenant's person or program (submit, read, cancel,
rules, secrets, and the worker protocol for its own tenant, since the original worker runs
with a user key), `worker` a node's credential (a Salad workload token, or a Kelpie key issued
with scope `worker`): only the worker protocol. `public` needs no credentials at all.
tests/api/test_permissions.py fails for any route without `@allow`.
"""

import functools

from sanic import Request

from api.auth import authenticate
from api.errors import Forbidden
from api.principal import ADMIN, SCOPES, USER, WORKER

PUBLIC = "public"
ATTRIBUTE = "kelpie_scopes"


def allow(*scopes: str, key_checked_by_statement: bool = False):
    """Route decorator: authenticate (unless public) and refuse any scope not named.

    `key_checked_by_statement`: the route's database statement itself checks that a Kelpie key
    still exists (claims, heartbeats: api/sql.py), so a cached principal may be used."""
    unknown = set(scopes) - {*SCOPES, PUBLIC}
    if not scopes or unknown:
        raise ValueError(f"allow() needs scopes from {SCOPES + (PUBLIC,)}, got {scopes}")

    def decorate(handler):
        if PUBLIC in scopes:
            wrapper = handler
        else:
            @functools.wraps(handler)
            async def wrapper(request: Request, *args, **kwargs):
                request.ctx.key_checked_by_statement = key_checked_by_statement
                principal = await authenticate(request)
                check(principal.scope, scopes)
                request.ctx.principal = principal
                return await handler(request, *args, **kwargs)
        setattr(wrapper, ATTRIBUTE, frozenset(scopes))
        return wrapper

    return decorate


def check(scope: str, allowed) -> None:
    if scope not in allowed:
        needed = " or ".join(s for s in SCOPES if s in allowed)
        raise Forbidden(f"this route needs scope {needed}; the credential has scope {scope}",
                        scope=scope)


# The three kinds of route, named once.
ADMIN_ONLY = (ADMIN,)
TENANT = (ADMIN, USER)
WORKER_PROTOCOL = (ADMIN, USER, WORKER)
