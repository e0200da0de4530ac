"""Fixtures shared by every suite: databases (SQLite and PostgreSQL) and the API as a real
process on loopback. Suite-specific fixtures live in each folder's own conftest."""

import os

import pytest

from tests.support import postgres
from tests.support.api_process import ApiProcess

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
def api(database_url, tmp_path_factory):
    """The API on a fresh database, once per test module and dialect."""
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    server = ApiProcess(database_url, log_path=log_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def user_key(api, request):
    """A new user for this test alone: tests stay independent on a shared database."""
    return api.create_user(request.node.name[:200])
