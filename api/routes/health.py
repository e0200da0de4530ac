"""Liveness for load balancers: answers 200 only when the database answers."""

import logging

from sanic import Blueprint, Request
from sanic.response import json

from api import db
from api.routes import documented
from api.scopes import PUBLIC, allow

log = logging.getLogger("kelpie.api.health")
bp = Blueprint("health")


def _ping() -> None:
    db.database.execute_sql("SELECT 1")


@bp.get("/healthz")
@documented("Health: the database is reachable", responses={200: "Health", 503: "Health"},
            errors=(), secured=False)
@allow(PUBLIC)
async def healthz(request: Request):
    try:
        await db.run(_ping)
    except Exception:  # any database failure means unhealthy
        # The reason goes to the log, not to anonymous callers: it can name hosts, users and
        # database internals.
        log.exception("health check: the database did not answer")
        return json({"status": "unhealthy", "database": "unavailable"}, status=503)
    return json({"status": "ok", "database": "ok"})
