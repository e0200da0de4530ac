"""Fixtures shared by every suite: databases (SQLite and PostgreSQL), the API as a real process
on loopback, SeaweedFS and the IMDS stand-in. Suite-specific fixtures live in each folder's own
conftest."""

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


def make_database_url(dialect: str, tmp_dir) -> tuple[str, callable]:
    """A fresh database of the given dialect: (DATABASE_URL, cleanup)."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_dir}/kelpie.db", lambda: None
    name, url = postgres.create_database()
    return url, lambda: postgres.drop_database(name)


@pytest.fixture(scope="module", params=DIALECTS)
def database_url(request, tmp_path_factory):
    url, cleanup = make_database_url(request.param, tmp_path_factory.mktemp("db"))
    yield url
    cleanup()


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL database for this module alone, whatever `database_url` is."""
    name, url = postgres.create_database()
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """Factory: api_server(database_url, env={...}, workers=N) starts an API process with its own
    log; every one started stops at the end of the module."""
    started: list[ApiProcess] = []

    def start(database_url: str, *, env: dict | None = None, workers: int = 1) -> ApiProcess:
        server = ApiProcess(database_url, env=env, workers=workers,
                            log_path=tmp_path_factory.mktemp("api") / "api.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


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
