"""Keys, users, the administrator, and tenancy: a user never sees another user's jobs."""

import json
import urllib.error
import urllib.request

import pytest

from tests.api.jobdefs import sync_job


def test_no_credentials_is_401_and_a_bad_key_is_403(api):
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(api.url + "/jobs")
    assert failure.value.code == 401
    assert json.loads(failure.value.read())["error"] == "unauthorized"
    status, error = api.request("GET", "/jobs", key="kelpie_not-a-real-key")
    assert status == 403 and error["error"] == "forbidden"


def test_users_are_created_by_the_admin_only(api, user_key):
    status, error = api.request("POST", "/users", {"name": "sneaky"}, key=user_key)
    assert status == 403
    status, created = api.request("POST", "/users", {"name": "n", "org": "o", "project": "p"})
    assert status == 201
    assert created["token"].startswith("kelpie_")
    assert (created["name"], created["org"], created["project"]) == ("n", "o", "p")
    _, me = api.request("GET", "/users/me", key=created["token"])
    assert me["id"] == created["id"] and "token" not in me
    status, error = api.request("POST", "/users", {"org": "o"})
    assert status == 400 and error["field"] == "name"


def test_another_token_for_a_user(api, user_key):
    _, me = api.request("GET", "/users/me", key=user_key)
    status, body = api.request("POST", f"/users/{me['id']}/token")
    assert status == 201
    _, me_again = api.request("GET", "/users/me", key=body["token"])
    assert me_again["id"] == me["id"]
    assert api.request("POST", "/users/nobody/token")[0] == 404
    assert api.request("POST", f"/users/{me['id']}/token", key=user_key)[0] == 403


def test_tenant_cannot_read_cancel_or_claim_another_tenants_jobs(api):
    alice = api.create_user("alice")
    bob = api.create_user("bob")
    _, job = api.request("POST", "/jobs", sync_job(container_group_id="shared"), key=alice)

    assert api.request("GET", f"/jobs/{job['id']}", key=bob)[0] == 404
    assert api.request("GET", f"/jobs/{job['id']}/events", key=bob)[0] == 404
    assert api.request("DELETE", f"/jobs/{job['id']}", key=bob)[0] == 404
    assert api.request("GET", "/jobs", key=bob)[1] == {"_count": 0, "jobs": []}
    assert api.request("GET", "/work?machine_id=b1&container_group_id=shared", key=bob)[1] == []
    assert api.request("DELETE", "/jobs/container-groups/shared", key=bob)[1] == {"count": 0}
    # Bob cannot speak for alice's job either.
    _, [claimed] = api.request("GET", "/work?machine_id=a1&container_group_id=shared", key=alice)
    assert api.request("POST", f"/jobs/{claimed['id']}/heartbeat",
                       {"machine_id": "a1"}, key=bob)[0] == 404
    assert api.request("POST", f"/jobs/{claimed['id']}/completed",
                       {"machine_id": "a1"}, key=bob)[0] == 404
    _, still = api.request("GET", f"/jobs/{job['id']}", key=alice)
    assert still["status"] == "running"
    # The administrator sees every tenant's jobs.
    assert api.request("GET", f"/jobs/{job['id']}")[0] == 200


def test_admin_only_routes(api, user_key):
    assert api.request("DELETE", "/jobs", key=user_key)[0] == 403
    assert api.request("DELETE", "/users", key=user_key)[0] == 403


def test_admin_clears_jobs_and_users(api):
    victim = api.create_user("victim")
    api.request("POST", "/jobs", sync_job(), key=victim)
    # 204 and no body, as the original answers.
    assert api.request("DELETE", "/jobs") == (204, None)
    assert api.request("GET", "/jobs")[1]["_count"] == 0
    assert api.request("DELETE", "/users") == (204, None)
    # The admin key still works; the deleted user's key stops at once (keys are not cached).
    assert api.request("GET", "/users/me")[0] == 200
    assert api.request("GET", "/users/me", key=victim)[0] == 403
