"""Every setting of the coordination service, read from the environment in one place.

The README's configuration table lists the same names; keep the two together.
"""

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    # Where state lives. SQLite needs nothing installed; PostgreSQL is for production.
    database_url: str = "sqlite:///kelpie.db"
    # Connections per API process; also the size of the thread pool that runs database calls,
    # so a request never waits for a connection that a thread could not use anyway. Small on
    # purpose: the threads share one GIL with the event loop, and measured on 2 cores, 16
    # threads made heartbeat p99 five times worse than 4 for no gain in throughput. Scale with
    # more processes (--workers), not more threads.
    db_pool_size: int = 4
    # Bootstrap administrator key: the admin creates users and can see every job.
    admin_key: str | None = None
    # Largest accepted request body (a batch of 1000 jobs with long sync lists fits easily).
    max_body_bytes: int = 8 * 1024 * 1024
    # How long a worker token's organization user is remembered (Kelpie keys are never cached:
    # revocation is immediate).
    auth_cache_seconds: float = 10.0
    # Failed authentications per client address (api/ratelimit.py): a burst, then this many a
    # second. 0 turns the limit off.
    auth_failure_burst: int = 20
    auth_failure_rate: float = 1.0
    # Limits on job fields, so one job cannot hold the queue hostage.
    default_max_failures: int = 3
    default_heartbeat_interval: int = 30
    # Lost leases a job survives before it ends `failed` ("too many interruptions"). Generous:
    # interruptions are the normal life of a job on interruptible nodes; this only stops a job
    # that kills every node it lands on from being handed around for ever.
    default_max_interruptions: int = 100
    # Slack on every lease: lease = max(2 × heartbeat_interval, heartbeat_interval + this)
    # (api/lease.py).
    lease_grace_s: int = 15
    # Days to keep finished jobs' events and settled webhook deliveries (None: for ever), and
    # seconds between retention passes (api/retention.py).
    retention_days: float | None = None
    retention_interval: float = 3600.0
    max_page_size: int = 1000
    max_batch_size: int = 1000
    # Bans after which a machine is reallocated through Salad's API.
    max_failures_per_worker: int = 5
    # Salad's public API (autoscaling, reallocation, Salad identity): where, with which key,
    # how many calls at once, seconds per attempt, retries on 429/5xx and the first backoff.
    salad_api_url: str = "https://api.salad.com/api/public"
    salad_api_key: str | None = None
    salad_api_concurrency: int = 4
    salad_api_timeout: float = 10.0
    salad_api_retries: int = 5
    salad_api_backoff: float = 0.5
    # Seconds between autoscaling ticks (one tick across all processes and replicas).
    autoscale_interval: float = 60.0
    # Status webhooks (api/webhooks.py): retried with exponential backoff and jitter, from
    # retry_base up to retry_max seconds between tries, until give_up seconds after the change.
    webhook_timeout: float = 10.0
    webhook_retry_base: float = 5.0
    webhook_retry_max: float = 1800.0
    webhook_give_up: float = 24 * 3600.0
    # How often each API process looks for due deliveries, and how many it sends at once.
    webhook_poll_interval: float = 1.0
    webhook_concurrency: int = 8
    # Of those, how many may go to one destination (scheme, host and port) at once, so a slow or
    # dead receiver holds only its share of the senders. 0: a quarter of webhook_concurrency.
    webhook_per_destination: int = 0
    # Multi-tenant deployments: refuse loopback and private destinations too (link-local and
    # cloud metadata addresses are always refused).
    webhook_deny_private: bool = False
    # /metrics without a key (default: administrator only; it names every tenant's groups).
    metrics_public: bool = False
    # When set, the only host names (or IP literals) webhooks may go to, e.g. a single-tenant
    # deployment's own endpoints, or "127.0.0.1,localhost" in test setups. Empty: any host.
    webhook_allowed_hosts: tuple[str, ...] = ()
    # Salad identity (api/salad_auth.py). Users: Salad's authentication service, called with this
    # service's own credentials (HTTP basic auth); answers are trusted for auth_cache seconds,
    # and for auth_stale seconds more while Salad is unreachable.
    salad_auth_url: str | None = None
    salad_auth_username: str | None = None
    salad_auth_password: str | None = None
    salad_auth_cache_seconds: float = 60.0
    salad_auth_stale_seconds: float = 900.0
    # Workers: the JWKS their instance-metadata JWTs are signed with. Keys are refreshed every
    # jwks_cache seconds and on an unknown kid, but never more often than jwks_min_refresh.
    salad_jwks_url: str = "https://matrix-rest-api.salad.com/.well-known/workload-jwks.json"
    salad_jwks_cache_seconds: float = 3600.0
    salad_jwks_min_refresh_seconds: float = 60.0
    # Clock skew tolerated on exp/nbf/iat; audience and issuer are checked only when set.
    salad_jwt_leeway_seconds: float = 30.0
    salad_jwt_audience: str | None = None
    salad_jwt_issuer: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))


# The administrator's key can do anything: one short enough to guess is refused at start-up.
MIN_ADMIN_KEY_LENGTH = 32


def _admin_key() -> str | None:
    key = os.environ.get("KELPIE_ADMIN_KEY") or None
    if key is not None and len(key) < MIN_ADMIN_KEY_LENGTH:
        raise SystemExit(f"KELPIE_ADMIN_KEY must be at least {MIN_ADMIN_KEY_LENGTH} characters "
                         f"(it has {len(key)}); make one with: "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def load() -> Settings:
    return Settings(
        database_url=os.environ.get("DATABASE_URL") or "sqlite:///kelpie.db",
        db_pool_size=_int("KELPIE_DB_POOL_SIZE", 4),
        admin_key=_admin_key(),
        max_body_bytes=_int("KELPIE_MAX_BODY_BYTES", 8 * 1024 * 1024),
        auth_cache_seconds=_float("KELPIE_AUTH_CACHE_S", 10.0),
        auth_failure_burst=_int("KELPIE_AUTH_FAILURE_BURST", 20),
        auth_failure_rate=_float("KELPIE_AUTH_FAILURE_RATE", 1.0),
        default_max_failures=_int("KELPIE_DEFAULT_MAX_FAILURES", 3),
        default_heartbeat_interval=_int("KELPIE_DEFAULT_HEARTBEAT_INTERVAL_S", 30),
        default_max_interruptions=_int("KELPIE_DEFAULT_MAX_INTERRUPTIONS", 100),
        lease_grace_s=_int("KELPIE_LEASE_GRACE_S", 15),
        retention_days=_float("KELPIE_RETENTION_DAYS", 0.0) or None,
        retention_interval=_float("KELPIE_RETENTION_INTERVAL_S", 3600.0),
        max_page_size=_int("KELPIE_MAX_PAGE_SIZE", 1000),
        max_failures_per_worker=_int("MAX_FAILURES_PER_WORKER", 5),
        salad_api_url=os.environ.get("KELPIE_SALAD_API_URL") or "https://api.salad.com/api/public",
        salad_api_key=os.environ.get("KELPIE_SALAD_API_KEY") or None,
        salad_api_concurrency=_int("KELPIE_SALAD_API_CONCURRENCY", 4),
        salad_api_timeout=_float("KELPIE_SALAD_API_TIMEOUT_S", 10.0),
        salad_api_retries=_int("KELPIE_SALAD_API_RETRIES", 5),
        salad_api_backoff=_float("KELPIE_SALAD_API_BACKOFF_S", 0.5),
        autoscale_interval=_float("KELPIE_AUTOSCALE_INTERVAL_S", 60.0),
        webhook_timeout=_float("KELPIE_WEBHOOK_TIMEOUT_S", 10.0),
        webhook_retry_base=_float("KELPIE_WEBHOOK_RETRY_BASE_S", 5.0),
        webhook_retry_max=_float("KELPIE_WEBHOOK_RETRY_MAX_S", 1800.0),
        webhook_give_up=_float("KELPIE_WEBHOOK_GIVE_UP_S", 24 * 3600.0),
        webhook_poll_interval=_float("KELPIE_WEBHOOK_POLL_S", 1.0),
        webhook_concurrency=_int("KELPIE_WEBHOOK_CONCURRENCY", 8),
        webhook_per_destination=_int("KELPIE_WEBHOOK_PER_DESTINATION", 0),
        webhook_deny_private=_bool("KELPIE_WEBHOOK_DENY_PRIVATE", False),
        metrics_public=_bool("KELPIE_METRICS_PUBLIC", False),
        webhook_allowed_hosts=tuple(
            host.strip().lower().strip("[]")
            for host in os.environ.get("KELPIE_WEBHOOK_ALLOWED_HOSTS", "").split(",")
            if host.strip()),
        salad_auth_url=os.environ.get("KELPIE_SALAD_AUTH_URL") or None,
        salad_auth_username=os.environ.get("KELPIE_SALAD_AUTH_USERNAME") or None,
        salad_auth_password=os.environ.get("KELPIE_SALAD_AUTH_PASSWORD") or None,
        salad_auth_cache_seconds=_float("KELPIE_SALAD_AUTH_CACHE_S", 60.0),
        salad_auth_stale_seconds=_float("KELPIE_SALAD_AUTH_STALE_S", 900.0),
        salad_jwks_url=os.environ.get("KELPIE_SALAD_JWKS_URL")
        or "https://matrix-rest-api.salad.com/.well-known/workload-jwks.json",
        salad_jwks_cache_seconds=_float("KELPIE_SALAD_JWKS_CACHE_S", 3600.0),
        salad_jwks_min_refresh_seconds=_float("KELPIE_SALAD_JWKS_MIN_REFRESH_S", 60.0),
        salad_jwt_leeway_seconds=_float("KELPIE_SALAD_JWT_LEEWAY_S", 30.0),
        salad_jwt_audience=os.environ.get("KELPIE_SALAD_JWT_AUDIENCE") or None,
        salad_jwt_issuer=os.environ.get("KELPIE_SALAD_JWT_ISSUER") or None,
    )
