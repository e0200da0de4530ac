"""GET /metrics: Prometheus text format. It names every tenant's container groups, so only the
administrator may scrape it, unless KELPIE_METRICS_PUBLIC=1 opens it (for a scraper on a
private network that cannot send a header)."""

from sanic import Blueprint, Request
from sanic.response import raw

from api import db, metrics
from api.auth import authenticate
from api.routes import documented
from api.scopes import ADMIN_ONLY, PUBLIC, allow, check

bp = Blueprint("metrics")


@bp.get("/metrics")
@documented("Prometheus metrics (administrator key, or public with KELPIE_METRICS_PUBLIC=1)",
            responses={200: None}, errors=(401, 403))
# Public as a route: whether a key is needed is a setting, checked below.
@allow(PUBLIC)
async def scrape(request: Request):
    if not request.app.ctx.settings.metrics_public:
        principal = await authenticate(request)
        check(principal.scope, ADMIN_ONLY)
    state = await db.run(metrics.read_state)
    body, content_type = metrics.render(state)
    return raw(body, content_type=content_type)
