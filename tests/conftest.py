"""Fixtures shared by every suite: databases (SQLite and PostgreSQL), the API as a real process
on loopback, SeaweedFS and the IMDS stand-in. Suite-specific fixtures live in each folder's own
conftest."""

import contextlib
import os
import secrets

import pytest

from tests.support import postgres
from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.seaweed import seaweed_store

# Nothing a test starts may reach a cloud metadata service.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

DIALECTS = ["sqlite", "postgresql"]

# API processes started by `api_server`, by DATABASE_URL. A module's second dialect is set up
# after its `api_server`, so pytest would drop that database first and the API, losing its
# database, then took some 10 s to stop: a database fixture stops the servers on it first.
_servers_by_database: dict[str, list[ApiProcess]] = {}


def _stop_servers_on(url: str) -> None:
    for server in _servers_by_database.pop(url, []):
        server.stop()


def make_database_url(dialect: str, tmp_dir) -> tuple[str, callable]:
    """A fresh database of the given dialect: (DATABASE_URL, cleanup)."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_dir}/kelpie.db", lambda: None
    name, url = postgres.create_database()
    return url, lambda: postgres.drop_database(name)


@contextlib.contextmanager
def queue_database(dialect: str, tmp_dir, user_ids=()):
    """A fresh, migrated database this process talks to directly (api.db), with these users,
    for tests that call the queue in-process rather than over HTTP."""
    from api import db
    from api.config import Settings
    from api.migrations import apply_all
    from api.models import User

    url, cleanup = make_database_url(dialect, tmp_dir)
    db.init(Settings(database_url=url))
    try:
        with db.database.connection_context():
            apply_all()
            for user_id in user_ids:
                User.create(id=user_id, name=user_id, created=db.utcnow())
            yield
    finally:
        db.close()
        cleanup()


@pytest.fixture(scope="module", params=DIALECTS)
def database_url(request, tmp_path_factory):
    url, cleanup = make_database_url(request.param, tmp_path_factory.mktemp("db"))
    yield url
    _stop_servers_on(url)
    cleanup()


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL database for this module alone, whatever `database_url` is."""
    name, url = postgres.create_database()
    yield url
    _stop_servers_on(url)
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """Factory: api_server(database_url, env={...}, workers=N) starts an API process with its own
    log; each stops before its database is dropped, or at the end of the module."""
    started: list[ApiProcess] = []

    def start(database_url: str, *, env: dict | None = None, workers: int = 1) -> ApiProcess:
        server = ApiProcess(database_url, env=env, workers=workers,
                            log_path=tmp_path_factory.mktemp("api") / "api.log")
        started.append(server)
        _servers_by_database.setdefault(database_url, []).append(server)
        return server.start()

    yield start
    for server in started:
        _stop_servers_on(server.database_url)  # if its database fixture has not already


@pytest.fixture(scope="module")
def api(database_url, api_server):
    """The API on a fresh database, once per test module and dialect."""
    return api_server(database_url)


@pytest.fixture
def user_key(api, request):
    """A new user for this test alone: tests stay independent on a shared database."""
    return api.create_user(request.node.name[:200])


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    yield from seaweed_store(tmp_path_factory)


@pytest.fixture
def bucket(seaweed):
    return seaweed.create_bucket("test-" + secrets.token_hex(6))


@pytest.fixture
def s3(seaweed):
    return seaweed.client()


@pytest.fixture
def imds():
    with FakeImds() as fake:
        yield fake
