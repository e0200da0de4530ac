"""HTTP-level behaviour: JSON errors everywhere, body limits, health, the OpenAPI document."""

import http.client
import json
import urllib.error
import urllib.request

import pytest

from api.errors import JsonErrorHandler


def raw(api, method, path, data: bytes | None = None, headers=None):
    request = urllib.request.Request(api.url + path, data=data, method=method,
                                     headers={"X-Kelpie-Key": api.admin_key, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health(api):
    status, body = raw(api, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize("data, expected_field", [(b"{not json", "body"), (b"[1, 2", "body")])
def test_malformed_json_is_a_400(api, user_key, data, expected_field):
    status, body = raw(api, "POST", "/jobs", data, {"X-Kelpie-Key": user_key,
                                                   "Content-Type": "application/json"})
    error = json.loads(body)
    assert status == 400 and error["field"] == expected_field and error["error"] == "bad_request"


def test_unknown_route_and_method_are_json(api):
    status, body = raw(api, "GET", "/no/such/route")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, body = raw(api, "PUT", "/jobs")
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"


def test_oversized_body_is_413(api, user_key):
    """The limit is enforced from Content-Length, before the body is read."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    connection.putrequest("POST", "/jobs")
    connection.putheader("X-Kelpie-Key", user_key)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(9 * 1024 * 1024))  # over the 8 MiB default
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "payload_too_large"
    connection.close()


def test_openapi_document_covers_every_route(api):
    status, body = raw(api, "GET", "/docs/openapi.json")
    assert status == 200
    document = json.loads(body)
    assert document["openapi"].startswith("3.")
    from agent.version import __version__
    assert document["info"]["version"] == __version__
    paths = document["paths"]
    expected = {
        ("/jobs", "post"), ("/jobs", "get"), ("/jobs", "delete"), ("/jobs/batch", "post"),
        ("/jobs/{job_id}", "get"), ("/jobs/{job_id}", "delete"), ("/jobs/{job_id}/events", "get"),
        ("/jobs/container-groups/{container_group_id}", "delete"), ("/work", "get"),
        ("/jobs/{job_id}/heartbeat", "post"), ("/jobs/{job_id}/completed", "post"),
        ("/jobs/{job_id}/failed", "post"), ("/users", "post"), ("/users", "delete"),
        ("/users/{user_id}/token", "post"), ("/users/me", "get"), ("/healthz", "get"),
    }
    documented = {(path, method) for path, item in paths.items() for method in item}
    assert expected <= documented
    for path, method in expected:
        operation = paths[path][method]
        assert operation["responses"], (path, method)
        success = [code for code in operation["responses"] if code.startswith("2")]
        assert success, (path, method)
        for code in success:
            assert "content" in operation["responses"][code], (path, method, code)
    schemas = document["components"]["schemas"]
    assert {"Job", "JobRequest", "JobList", "Error", "SyncEntry"} <= set(schemas)
    status, page = raw(api, "GET", "/docs/swagger")
    assert status == 200 and b"swagger" in page.lower()


def test_error_handler_shapes_unexpected_errors():
    """In-process (sanic-testing): an unexpected exception is a JSON 500 without internals."""
    from sanic import Sanic

    app = Sanic("error_shape_test", error_handler=JsonErrorHandler())

    @app.get("/boom")
    async def boom(request):
        raise RuntimeError("secret internals")

    _, response = app.test_client.get("/boom")
    assert response.status == 500
    assert response.json == {"error": "internal_error", "message": "internal error"}
