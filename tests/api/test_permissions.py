"""The permission matrix (tests/api/permission_matrix.py) against a real API: every route ×
every kind of caller, on SQLite and PostgreSQL. A route of the app without a row fails here, and
so does a docs/salad-auth.md table that no longer matches the matrix."""

import pytest

from api import config
from api.app import create_app
from tests.api import permission_matrix
from tests.api.principals import KINDS, World

# Routes sanic-ext adds for the OpenAPI document and its UI: public, read-only, not ours.
DOCS_PREFIX = "docs"


def _app_routes(tmp_path) -> set[tuple[str, str]]:
    settings = config.Settings(database_url=f"sqlite:///{tmp_path}/routes.db")
    app = create_app(settings, name="kelpie_route_table")
    routes = set()
    for route in app.router.routes:
        if route.path.startswith(DOCS_PREFIX):
            continue
        for method in route.methods:
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, "/" + route.path))
    return routes


def test_every_route_has_a_row_and_an_allow(tmp_path):
    from api.scopes import ATTRIBUTE

    settings = config.Settings(database_url=f"sqlite:///{tmp_path}/allow.db")
    app = create_app(settings, name="kelpie_allow_check")
    unguarded = [route.path for route in app.router.routes
                 if not route.path.startswith(DOCS_PREFIX)
                 and not getattr(route.handler, ATTRIBUTE, None)]
    assert unguarded == [], "routes without @allow(...)"

    in_matrix = {(row.method, row.route) for row in permission_matrix.ROWS}
    routes = _app_routes(tmp_path)
    assert routes - in_matrix == set(), "routes missing from the permission matrix"
    assert in_matrix - routes == set(), "matrix rows for routes the app does not have"


def test_the_document_shows_the_matrix():
    text = permission_matrix.DOC.read_text()
    assert permission_matrix.document_section(text) == permission_matrix.render(), (
        "docs/salad-auth.md is out of date: run python -m tests.api.permission_matrix")


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    made = World(database_url, tmp_path_factory.mktemp("api") / "api.log").start()
    yield made
    made.stop()


def test_permission_matrix(world):
    """Every cell: make the request as that caller, compare the status. All mismatches are
    reported together."""
    assert set(world.callers) == set(KINDS)
    mismatches = []
    for row, kind in permission_matrix.cells():
        caller = world.callers[kind]
        path, body = row.make(world, caller)
        status, answer = world.request(kind, row.method, path, body)
        expected = row.statuses()[kind]
        if status != expected:
            mismatches.append(f"{row.method} {row.route} as {kind}: {status} (expected "
                              f"{expected}) {str(answer)[:200]}")
        elif status >= 400:
            # Refusals are JSON errors that say why.
            assert answer and {"error", "message"} <= set(answer), (row.route, kind, answer)
            if status == 403 and kind in ("jwt_g", "worker_key"):
                # These two speak only for what they are bound to, so any 403 is their scope.
                assert "the credential has scope worker" in answer["message"], answer
    assert mismatches == [], "\n".join(mismatches)
