"""Database selection, connections, the thread pool that keeps Peewee off the event loop, and
the few places where SQLite and PostgreSQL need different SQL.

Peewee is synchronous. Every database call from a request handler goes through `run()`, which
executes it on a small thread pool whose size matches the connection pool, so the event loop
never blocks on the database and a thread never waits for a connection.
"""

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import unquote, urlparse

from peewee import DatabaseProxy, InterfaceError, OperationalError
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from api.config import Settings
from api.errors import Unavailable

log = logging.getLogger("kelpie.db")

database = DatabaseProxy()
_executor: ThreadPoolExecutor | None = None
# The worker protocol's own lane (claim, heartbeat, reports): a tenant listing thousands of
# jobs in a loop fills the main pool, and a heartbeat queued behind those reads once cost a
# live holder its job.
_protocol_executor: ThreadPoolExecutor | None = None
PROTOCOL_LANE_SIZE = 2


def make_database(settings: Settings):
    """A pooled Peewee database for `settings.database_url`."""
    url = urlparse(settings.database_url)
    if settings.is_postgres:
        return PooledPostgresqlDatabase(
            unquote(url.path.lstrip("/")) or "postgres",
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            max_connections=settings.db_pool_size + PROTOCOL_LANE_SIZE + 2,
            stale_timeout=300,
            # Dead connections (a PostgreSQL restart) are noticed on checkout and replaced.
            autoconnect=True,
        )
    if url.scheme != "sqlite":
        raise SystemExit(f"DATABASE_URL must be sqlite:///path or postgresql://…, got {url.scheme!r}")
    path = settings.database_url[len("sqlite:///"):] or "kelpie.db"
    return PooledSqliteDatabase(
        path,
        max_connections=settings.db_pool_size + PROTOCOL_LANE_SIZE + 2,
        stale_timeout=300,
        check_same_thread=False,
        pragmas={
            # WAL lets readers run while a writer commits; several API processes can share a file.
            "journal_mode": "wal",
            "synchronous": "normal",
            "foreign_keys": 1,
            # Writers queue on the lock instead of failing at once.
            "busy_timeout": 15000,
        },
    )


def init(settings: Settings) -> None:
    """Bind the models to the configured database and start the database thread pool."""
    global _executor, _protocol_executor, _reconnect_wait_s
    _reconnect_wait_s = settings.db_reconnect_wait_s
    database.initialize(make_database(settings))
    if _executor is None:
        _executor = ThreadPoolExecutor(settings.db_pool_size, thread_name_prefix="db")
    if _protocol_executor is None:
        _protocol_executor = ThreadPoolExecutor(PROTOCOL_LANE_SIZE,
                                                thread_name_prefix="db-protocol")


def close() -> None:
    global _executor, _protocol_executor
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None
    if _protocol_executor is not None:
        _protocol_executor.shutdown(wait=True)
        _protocol_executor = None
    if database.obj is not None:
        database.close_all()


def is_postgres() -> bool:
    return isinstance(database.obj, PooledPostgresqlDatabase)


def dialect() -> str:
    return "postgresql" if is_postgres() else "sqlite"


# While PostgreSQL restarts it refuses connections for a moment (about a second for a fast
# restart, a few for crash recovery). A request waits that out on its database thread rather
# than answering 500; past this long (KELPIE_DB_RECONNECT_WAIT_S, set by init) it answers 503,
# which every client retries.
_reconnect_wait_s = 0.0


def _connect() -> None:
    """Open this thread's pooled connection, waiting out a database that refuses connections
    (up to _reconnect_wait_s), then 503. SQLite's errors are raised as they are."""
    deadline = time.monotonic() + _reconnect_wait_s
    delay = 0.05
    while True:
        try:
            database.connect(reuse_if_open=True)
            return
        except (OperationalError, InterfaceError) as error:
            if not is_postgres():
                raise
            if time.monotonic() + delay > deadline:
                log.warning("database unreachable for %.0f s: %s", _reconnect_wait_s,
                            (str(error).strip().splitlines() or [type(error).__name__])[0])
                raise Unavailable("the database is unavailable; retry shortly") from error
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _with_connection(func, *args, **kwargs):
    """Run `func` on a pooled connection. When PostgreSQL dropped the connection (a restart,
    a failover, pg_terminate_backend), the pool's idle connections are dead too: they are all
    discarded and `func` runs once more on a fresh one, so the caller never sees the drop.
    Retrying is safe: the failed call's transaction was never committed. Connecting waits out
    a restart in progress (`_connect`)."""
    for attempt in (1, 2):
        _connect()
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError) as error:
            if attempt == 2 or not _connection_lost():
                raise
            log.warning("database connection lost (%s); retrying on a new connection",
                        (str(error).strip().splitlines() or [type(error).__name__])[0])
        finally:
            if not database.is_closed():
                database.close()  # back to the pool (a dead one is discarded below)
        database.close_idle()
    raise AssertionError("unreachable")


def _connection_lost() -> bool:
    """Whether the connection this thread just used is closed (psycopg2 marks a connection
    closed once the server has dropped it). SQLite connections are never lost this way."""
    if not is_postgres():
        return False
    connection = database.obj._state.conn
    return connection is not None and connection.closed != 0


async def run(func, *args, **kwargs):
    """Run a synchronous database function on the database thread pool."""
    loop = asyncio.get_running_loop()
    call = functools.partial(_with_connection, func, *args, **kwargs)
    return await loop.run_in_executor(_executor, call)


async def run_protocol(func, *args, **kwargs):
    """`run()` on the worker protocol's own lane: never queued behind users' reads."""
    loop = asyncio.get_running_loop()
    call = functools.partial(_with_connection, func, *args, **kwargs)
    return await loop.run_in_executor(_protocol_executor, call)


# --- The places where the two dialects differ -------------------------------------------------

def write_transaction():
    """A transaction for read-then-write work.

    SQLite: BEGIN IMMEDIATE takes the write lock up front, so two processes cannot both read the
    same candidate row and then both write it. PostgreSQL: an ordinary transaction; rows are
    locked with `locked()`.
    """
    if is_postgres():
        return database.atomic()
    return database.atomic("IMMEDIATE")


def locked(query, skip_locked: bool = False):
    """Add FOR UPDATE (optionally SKIP LOCKED) on PostgreSQL. SQLite's write transaction
    already excludes other writers, and it has no row locks."""
    if not is_postgres():
        return query
    return query.for_update("FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE")


def insert_rows(model, rows: list[dict]) -> None:
    """Insert many rows in one statement per chunk, bypassing Peewee's query builder.

    For a batch of 1,000 jobs Peewee spends most of the request building SQL; values are still
    converted by each field's `db_value`, so what is stored matches an ordinary insert.
    """
    if not rows:
        return
    fields = [model._meta.fields[name] for name in rows[0]]
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    table = model._meta.table_name
    values = [tuple(field.db_value(row[field.name]) for field in fields) for row in rows]
    cursor = database.cursor()
    if is_postgres():
        from psycopg2.extras import execute_values

        execute_values(cursor, f'INSERT INTO "{table}" ({columns}) VALUES %s', values,
                       page_size=1000)
    else:
        marks = ", ".join("?" for _ in fields)
        cursor.executemany(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})', values)


@contextlib.contextmanager
def advisory_lock(key: int):
    """Hold a PostgreSQL session advisory lock (e.g. while migrating); a no-op on SQLite,
    whose writers already serialise."""
    if not is_postgres():
        yield
        return
    database.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        database.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))


def utcnow() -> datetime:
    """Naive UTC, as stored. Microseconds are kept so that jobs created one after another
    sort in that order; the wire shows milliseconds with a Z."""
    return datetime.now(UTC).replace(tzinfo=None)
