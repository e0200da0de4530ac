"""Every setting of the coordination service, declared once.

Each field of `Settings` names its environment variable, its default and how its text is
read (`setting()`); `load()` reads them all from that declaration, and a test checks that the
README's configuration table lists the same names with the same defaults.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any


def integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def boolean(name: str, raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def text(name: str, raw: str) -> str:
    return raw


def days_or_forever(name: str, raw: str) -> float | None:
    """0 means no limit, like unset."""
    return number(name, raw) or None


def host_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated host names or IP literals, lower-cased, IPv6 brackets dropped."""
    return tuple(host.strip().lower().strip("[]") for host in raw.split(",") if host.strip())


# The administrator's key can do anything: one short enough to guess is refused at start-up.
MIN_ADMIN_KEY_LENGTH = 32


def long_secret(name: str, raw: str) -> str:
    if len(raw) < MIN_ADMIN_KEY_LENGTH:
        raise SystemExit(f"{name} must be at least {MIN_ADMIN_KEY_LENGTH} characters "
                         f"(it has {len(raw)}); make one with: "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return raw


def setting(env: str, default: Any, parse: Callable[[str, str], Any] = text):
    """A field read from `env` (unset or empty: `default`) through `parse(env, text)`."""
    return field(default=default, metadata={"env": env, "parse": parse})


@dataclass(frozen=True)
class Settings:
    # Where state lives. SQLite needs nothing installed; PostgreSQL is for production.
    database_url: str = setting("DATABASE_URL", "sqlite:///kelpie.db")
    # Connections per API process; also the size of the thread pool that runs database calls,
    # so a request never waits for a connection that a thread could not use anyway. Small on
    # purpose: the threads share one GIL with the event loop, and measured on 2 cores, 16
    # threads made heartbeat p99 five times worse than 4 for no gain in throughput. Scale with
    # more processes (--workers), not more threads.
    db_pool_size: int = setting("KELPIE_DB_POOL_SIZE", 4, integer)
    # How long a request waits out a database that refuses connections (api/db.py) before it
    # answers 503.
    db_reconnect_wait_s: float = setting("KELPIE_DB_RECONNECT_WAIT_S", 10.0, number)
    # Bootstrap administrator key: the admin creates users and can see every job.
    admin_key: str | None = setting("KELPIE_ADMIN_KEY", None, long_secret)
    # Largest accepted request body (a batch of 1000 jobs with long sync lists fits easily).
    max_body_bytes: int = setting("KELPIE_MAX_BODY_BYTES", 8 * 1024 * 1024, integer)
    # How long a worker token's organization user is remembered (Kelpie keys are never cached:
    # revocation is immediate).
    auth_cache_seconds: float = setting("KELPIE_AUTH_CACHE_S", 10.0, number)
    # A plain or long poll answered from the empty cache (api/routes/work.py) runs no claim
    # statement, so nothing there proves the caller's key still exists: it is re-read from the
    # database when it was last seen valid longer ago than this. The longest a revoked or
    # expired key keeps getting [] on that path; 0 reads it on every such poll.
    key_recheck_seconds: float = setting("KELPIE_KEY_RECHECK_S", 1.0, number)
    # The empty cache's safety net (api/wakeups.py): how long "nothing to claim here" is trusted
    # without a wake-up. A lease that runs out while nobody long-polls its group is seen then.
    empty_cache_ttl_s: float = setting("KELPIE_EMPTY_CACHE_TTL_S", 5.0, number)
    # Failed authentications per client address (api/ratelimit.py): a burst, then this many a
    # second. 0 turns the limit off.
    auth_failure_burst: int = setting("KELPIE_AUTH_FAILURE_BURST", 20, integer)
    auth_failure_rate: float = setting("KELPIE_AUTH_FAILURE_RATE", 1.0, number)
    # Limits on job fields, so one job cannot hold the queue hostage.
    default_max_failures: int = setting("KELPIE_DEFAULT_MAX_FAILURES", 3, integer)
    default_heartbeat_interval: int = setting("KELPIE_DEFAULT_HEARTBEAT_INTERVAL_S", 30, integer)
    # Lost leases a job survives before it ends `failed` ("too many interruptions"). Generous:
    # interruptions are the normal life of a job on interruptible nodes; this only stops a job
    # that kills every node it lands on from being handed around for ever.
    default_max_interruptions: int = setting("KELPIE_DEFAULT_MAX_INTERRUPTIONS", 100, integer)
    # Slack on every lease: lease = max(2 × heartbeat_interval, heartbeat_interval + this)
    # (api/lease.py).
    lease_grace_s: int = setting("KELPIE_LEASE_GRACE_S", 15, integer)
    # Days to keep finished jobs' events and settled webhook deliveries (None: for ever), and
    # seconds between retention passes (api/retention.py).
    retention_days: float | None = setting("KELPIE_RETENTION_DAYS", None, days_or_forever)
    retention_interval: float = setting("KELPIE_RETENTION_INTERVAL_S", 3600.0, number)
    max_page_size: int = setting("KELPIE_MAX_PAGE_SIZE", 1000, integer)
    # Longest hold of GET /work?wait=N (seconds): a larger N is served as this many.
    max_poll_wait_s: float = setting("KELPIE_MAX_POLL_WAIT_S", 30.0, number)
    # GET /jobs counts and pages through at most this many jobs of one listing: `_count` is
    # exact below it and this number at or above it, and page × page_size may not exceed it,
    # so no list page costs more than this many rows (api/queue.py list_jobs).
    list_window: int = setting("KELPIE_LIST_WINDOW", 100_000, integer)
    # Not configurable: the original's documented batch limit.
    max_batch_size: int = 1000
    # Bans after which a machine is reallocated through Salad's API (the original's name).
    max_failures_per_worker: int = setting("MAX_FAILURES_PER_WORKER", 5, integer)
    # Salad's public API (autoscaling, reallocation, Salad identity): where, with which key,
    # how many calls at once, seconds per attempt, retries on 429/5xx and the first backoff.
    salad_api_url: str = setting("KELPIE_SALAD_API_URL", "https://api.salad.com/api/public")
    salad_api_key: str | None = setting("KELPIE_SALAD_API_KEY", None)
    salad_api_concurrency: int = setting("KELPIE_SALAD_API_CONCURRENCY", 4, integer)
    salad_api_timeout: float = setting("KELPIE_SALAD_API_TIMEOUT_S", 10.0, number)
    salad_api_retries: int = setting("KELPIE_SALAD_API_RETRIES", 5, integer)
    salad_api_backoff: float = setting("KELPIE_SALAD_API_BACKOFF_S", 0.5, number)
    # Seconds between autoscaling ticks (one tick across all processes and replicas).
    autoscale_interval: float = setting("KELPIE_AUTOSCALE_INTERVAL_S", 60.0, number)
    # Status webhooks (api/webhooks.py): retried with exponential backoff and jitter, from
    # retry_base up to retry_max seconds between tries, until give_up seconds after the change.
    webhook_timeout: float = setting("KELPIE_WEBHOOK_TIMEOUT_S", 10.0, number)
    webhook_retry_base: float = setting("KELPIE_WEBHOOK_RETRY_BASE_S", 5.0, number)
    webhook_retry_max: float = setting("KELPIE_WEBHOOK_RETRY_MAX_S", 1800.0, number)
    webhook_give_up: float = setting("KELPIE_WEBHOOK_GIVE_UP_S", 24 * 3600.0, number)
    # How often each API process looks for due deliveries, and how many it sends at once.
    webhook_poll_interval: float = setting("KELPIE_WEBHOOK_POLL_S", 1.0, number)
    webhook_concurrency: int = setting("KELPIE_WEBHOOK_CONCURRENCY", 8, integer)
    # Of those, how many may go to one destination (scheme, host and port) at once, so a slow or
    # dead receiver holds only its share of the senders. 0: a quarter of webhook_concurrency.
    webhook_per_destination: int = setting("KELPIE_WEBHOOK_PER_DESTINATION", 0, integer)
    # Multi-tenant deployments: refuse loopback and private destinations too (link-local and
    # cloud metadata addresses are always refused).
    webhook_deny_private: bool = setting("KELPIE_WEBHOOK_DENY_PRIVATE", False, boolean)
    # /metrics without a key (default: administrator only; it names every tenant's groups).
    metrics_public: bool = setting("KELPIE_METRICS_PUBLIC", False, boolean)
    # When set, the only host names (or IP literals) webhooks may go to, e.g. a single-tenant
    # deployment's own endpoints, or "127.0.0.1,localhost" in test setups. Empty: any host.
    webhook_allowed_hosts: tuple[str, ...] = setting("KELPIE_WEBHOOK_ALLOWED_HOSTS", (), host_list)
    # Salad identity (api/salad_auth.py). Users: Salad's authentication service, called with this
    # service's own credentials (HTTP basic auth); answers are trusted for auth_cache seconds,
    # and for auth_stale seconds more while Salad is unreachable.
    salad_auth_url: str | None = setting("KELPIE_SALAD_AUTH_URL", None)
    salad_auth_username: str | None = setting("KELPIE_SALAD_AUTH_USERNAME", None)
    salad_auth_password: str | None = setting("KELPIE_SALAD_AUTH_PASSWORD", None)
    salad_auth_cache_seconds: float = setting("KELPIE_SALAD_AUTH_CACHE_S", 60.0, number)
    salad_auth_stale_seconds: float = setting("KELPIE_SALAD_AUTH_STALE_S", 900.0, number)
    # Workers: the JWKS their instance-metadata JWTs are signed with. Keys are refreshed every
    # jwks_cache seconds and on an unknown kid, but never more often than jwks_min_refresh.
    salad_jwks_url: str = setting(
        "KELPIE_SALAD_JWKS_URL", "https://matrix-rest-api.salad.com/.well-known/workload-jwks.json")
    salad_jwks_cache_seconds: float = setting("KELPIE_SALAD_JWKS_CACHE_S", 3600.0, number)
    salad_jwks_min_refresh_seconds: float = setting("KELPIE_SALAD_JWKS_MIN_REFRESH_S", 60.0, number)
    # Clock skew tolerated on exp/nbf/iat; audience and issuer are checked only when set.
    salad_jwt_leeway_seconds: float = setting("KELPIE_SALAD_JWT_LEEWAY_S", 30.0, number)
    salad_jwt_audience: str | None = setting("KELPIE_SALAD_JWT_AUDIENCE", None)
    salad_jwt_issuer: str | None = setting("KELPIE_SALAD_JWT_ISSUER", None)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))


def environment_settings() -> list:
    """The fields read from the environment, in declaration order."""
    return [item for item in fields(Settings) if "env" in item.metadata]


def load(environ=None) -> Settings:
    """Settings from the environment; an unset or empty variable keeps the field's default."""
    environ = os.environ if environ is None else environ
    values = {}
    for item in environment_settings():
        raw = environ.get(item.metadata["env"])
        if raw is not None and raw != "":
            values[item.name] = item.metadata["parse"](item.metadata["env"], raw)
    return Settings(**values)
