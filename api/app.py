"""The application factory: settings, database, blueprints, error handling, OpenAPI."""

import asyncio
import gc
import logging
import os

from sanic import Sanic
from sanic_ext import Extend
from sanic_ext.extensions.health.extension import HealthExtension
from sanic_ext.extensions.http.extension import HTTPExtension
from sanic_ext.extensions.logging.extension import LoggingExtension
from sanic_ext.extensions.openapi.extension import OpenAPIExtension

from agent.version import __version__
from api import autoscale, config, db, lease, metrics, salad, salad_auth, schemas, users, wakeups
from api.auth import key_cache
from api.errors import JsonErrorHandler
from api.migrations import apply_all
from api.ratelimit import FailureLimiter
from api.retention import retention_loop
from api.routes import docs, fleet, health, jobs, scaling_rules, ui, work
from api.routes import metrics as metrics_routes
from api.routes import users as user_routes
from api.routes import webhooks as webhook_routes
from api.webhooks import webhook_sender

log = logging.getLogger("kelpie.api")

# `python -m api serve --workers N` tells its worker processes N through this variable: on
# SQLite the in-process wake-up signal only reaches everyone when N is 1.
API_WORKERS_ENV = "KELPIE_API_WORKERS"

# Loops that run in the background of every API process, as `async def loop(app)`. Each one
# must be safe to run in several processes at once (advisory lock or SKIP LOCKED claims).
BACKGROUND_LOOPS = (
    autoscale.autoscaler,  # scaling rules: replicas of each container group
    webhook_sender,  # status webhooks: the outbox sender
    retention_loop,  # old history, settled webhooks, idempotency answers
)


def prepare_database(settings: config.Settings) -> None:
    """Connect, apply migrations and install the administrator key: run once before serving."""
    db.init(settings)
    with db.database.connection_context():
        applied = apply_all()
    if applied:
        log.info("migrations applied: %s", applied)
    users.ensure_admin(settings.admin_key)


def create_app(settings: config.Settings | None = None, name: str = "kelpie") -> Sanic:
    settings = settings or config.load()
    app = Sanic(name, error_handler=JsonErrorHandler())
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.OAS_UI_DEFAULT = "swagger"
    app.config.OAS_UI_REDOC = False
    app.config.OAS_URL_PREFIX = "/docs"
    app.config.CORS = False
    app.config.HEALTH = False
    # GET /work?wait holds a request up to max_poll_wait_s: the response timeout must outlast
    # it (a keep-alive connection's idle timeout, 120 s by default, already does).
    app.config.RESPONSE_TIMEOUT = max(60, int(settings.max_poll_wait_s) + 30)
    app.ctx.settings = settings
    app.ctx.key_cache = key_cache(settings.auth_cache_seconds)
    app.ctx.auth_limiter = FailureLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
    # Salad API key and worker JWT verification, with their caches (one set per process).
    app.ctx.salad_identity = salad_auth.SaladIdentity(settings)

    db.init(settings)
    salad.configure(settings)
    lease.configure(settings.lease_grace_s)

    docs.configure(app)  # Swagger UI's files from this server, not a CDN
    # sanic-ext's built-ins less dependency injection (and templating), which we never use:
    # injection's signal ran on every request, a few per cent of an empty poll's CPU.
    Extend(app, built_in_extensions=False,
           extensions=[OpenAPIExtension, HTTPExtension, HealthExtension, LoggingExtension])
    _describe_openapi(app)
    for blueprint in (health.bp, jobs.bp, work.bp, user_routes.bp, scaling_rules.bp,
                      webhook_routes.bp, fleet.bp, ui.bp, docs.bp, metrics_routes.bp):
        app.blueprint(blueprint)
    metrics.install(app)

    @app.after_server_start
    async def start_background_loops(app):
        for loop in BACKGROUND_LOOPS:
            app.add_task(loop(app), name=f"kelpie-{loop.__name__}")
        start_wakeups(app)
        # What start-up built (Sanic, pydantic's models, Peewee's, the routes: some 67,000
        # objects) lives as long as the process. Frozen, the collector's full collections
        # skip it: they are what an API holding thousands of parked polls pauses for.
        gc.freeze()

    @app.before_server_stop
    async def stop_background_loops(app):
        await stop_wakeups(app)
        for loop in BACKGROUND_LOOPS:
            await app.cancel_task(f"kelpie-{loop.__name__}", raise_exception=False)

    @app.after_server_stop
    async def close_database(app):
        db.close()

    return app


def start_wakeups(app: Sanic) -> None:
    """Long-poll wake-ups (api/wakeups.py): the PostgreSQL listener, or on SQLite the
    in-process signal, which is complete only when this is the one process on the file."""
    hub = wakeups.hub
    hub.loop = asyncio.get_running_loop()
    hub.empty_ttl_s = app.ctx.settings.empty_cache_ttl_s
    hub.closing = False
    if db.is_postgres():
        app.ctx.work_listener = wakeups.Listener(app.ctx.settings)
        app.add_task(app.ctx.work_listener.run(), name="kelpie-work-listener")
    else:
        hub.complete = os.environ.get(API_WORKERS_ENV, "1") == "1"
    app.add_task(wakeups.sweeper(app), name="kelpie-work-sweeper")


async def stop_wakeups(app: Sanic) -> None:
    hub = wakeups.hub
    hub.closing = True
    hub.complete = False
    hub.wake_all()  # parked requests answer [] now: shutdown does not wait for their deadline
    listener = getattr(app.ctx, "work_listener", None)
    if listener is not None:
        listener.stop()
        await app.cancel_task("kelpie-work-listener", raise_exception=False)
    await app.cancel_task("kelpie-work-sweeper", raise_exception=False)


def _describe_openapi(app: Sanic) -> None:
    spec = app.ext.openapi
    spec.describe(
        "Kelpie API",
        version=__version__,
        description="Coordinates long-running jobs on interruptible Salad nodes: users submit "
                    "jobs; kelpie workers claim them, heartbeat, and report completion or "
                    "failure.",
    )
    for name, schema in schemas.COMPONENTS.items():
        spec.add_component("schemas", name, schema)
    spec.add_security_scheme("KelpieKey", "apiKey", location="header", name="X-Kelpie-Key")
    spec.add_security_scheme("SaladApiKey", "apiKey", location="header", name="Salad-Api-Key")
    spec.add_security_scheme("SaladOrganization", "apiKey", location="header",
                             name="Salad-Organization")
    spec.add_security_scheme("SaladProject", "apiKey", location="header", name="Salad-Project")
    spec.add_security_scheme("SaladJWT", "http", scheme="bearer", bearer_format="JWT")
