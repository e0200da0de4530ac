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
    # so a request never waits for a connection that a thread could not use anyway.
    db_pool_size: int = 16
    # Bootstrap administrator key: the admin creates users and can see every job.
    admin_key: str | None = None
    # Largest accepted request body (a batch of 1000 jobs with long sync lists fits easily).
    max_body_bytes: int = 8 * 1024 * 1024
    # How long a verified API key is trusted without asking the database again.
    auth_cache_seconds: float = 10.0
    # Limits on job fields, so one job cannot hold the queue hostage.
    default_max_failures: int = 3
    default_heartbeat_interval: int = 30
    max_page_size: int = 1000
    max_batch_size: int = 1000
    # Bans after which a machine is reallocated through Salad's API.
    max_failures_per_worker: int = 5

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))


def load() -> Settings:
    return Settings(
        database_url=os.environ.get("DATABASE_URL") or "sqlite:///kelpie.db",
        db_pool_size=_int("KELPIE_DB_POOL_SIZE", 16),
        admin_key=os.environ.get("KELPIE_ADMIN_KEY") or None,
        max_body_bytes=_int("KELPIE_MAX_BODY_BYTES", 8 * 1024 * 1024),
        auth_cache_seconds=_float("KELPIE_AUTH_CACHE_S", 10.0),
        default_max_failures=_int("KELPIE_DEFAULT_MAX_FAILURES", 3),
        default_heartbeat_interval=_int("KELPIE_DEFAULT_HEARTBEAT_INTERVAL_S", 30),
        max_page_size=_int("KELPIE_MAX_PAGE_SIZE", 1000),
        max_failures_per_worker=_int("MAX_FAILURES_PER_WORKER", 5),
    )
