"""Liveness for load balancers: answers 200 only when the database answers."""

from sanic import Blueprint, Request
from sanic.response import json

from api import db
from api.routes import documented

bp = Blueprint("health")


def _ping() -> None:
    db.database.execute_sql("SELECT 1")


@bp.get("/healthz")
@documented("Health: the database is reachable", responses={200: "Health", 503: "Health"},
            errors=(), secured=False)
async def healthz(request: Request):
    try:
        await db.run(_ping)
    except Exception as error:  # any database failure means unhealthy
        return json({"status": "unhealthy", "database": str(error)[:200]}, status=503)
    return json({"status": "ok", "database": "ok"})
