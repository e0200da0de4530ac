"""The dashboard's read routes: /fleet/machines and /fleet/activity, and /ui's static files."""

import urllib.error
import urllib.request

from tests.api.jobdefs import sync_job

GROUP = "fleet-group"


def _work(api, key, machine):
    return api.request("GET", f"/work?machine_id={machine}&container_group_id={GROUP}", key=key)[1]


def test_machines_show_group_current_job_heartbeat_and_bans(api, user_key):
    failing = api.request("POST", "/jobs", sync_job(container_group_id=GROUP), key=user_key)[1]
    assert _work(api, user_key, "fleet-m1")[0]["id"] == failing["id"]
    api.request("POST", f"/jobs/{failing['id']}/failed",
                {"machine_id": "fleet-m1", "container_group_id": GROUP, "exit_code": 1},
                key=user_key)
    assert _work(api, user_key, "fleet-m2")[0]["id"] == failing["id"]

    status, body = api.request("GET", "/fleet/machines", key=user_key)
    assert status == 200
    machines = {machine["machine_id"]: machine for machine in body["machines"]}
    assert set(machines) == {"fleet-m1", "fleet-m2"}
    assert machines["fleet-m1"]["bans"] == 1 and machines["fleet-m1"]["current_job_id"] is None
    assert machines["fleet-m2"]["current_job_id"] == failing["id"]
    assert machines["fleet-m2"]["last_heartbeat"].endswith("Z")
    assert machines["fleet-m2"]["container_group_id"] == GROUP

    # Another tenant sees none of it; the administrator sees it all.
    other = api.create_user("fleet-other")
    assert api.request("GET", "/fleet/machines", key=other)[1] == {"machines": []}
    seen_by_admin = {m["machine_id"] for m in api.request("GET", "/fleet/machines")[1]["machines"]}
    assert {"fleet-m1", "fleet-m2"} <= seen_by_admin


def test_activity_counts_transitions_in_the_current_hour(api, user_key):
    for _ in range(2):
        api.request("POST", "/jobs", sync_job(container_group_id="activity"), key=user_key)
    status, body = api.request("GET", "/fleet/activity", key=user_key)
    assert status == 200
    assert len(body["hours"]) == 24 and all(len(v) == 24 for v in body["counts"].values())
    assert sum(body["counts"]["pending"]) == 2
    assert sum(body["counts"]["running"]) == 0
    other = api.create_user("activity-other")
    assert sum(api.request("GET", "/fleet/activity", key=other)[1]["counts"]["pending"]) == 0


def test_fleet_needs_a_key(api):
    assert api.request("GET", "/fleet/machines", key="wrong")[0] == 403
    request = urllib.request.Request(api.url + "/fleet/activity")
    try:
        urllib.request.urlopen(request)
        raise AssertionError("answered without credentials")
    except urllib.error.HTTPError as error:
        assert error.code == 401


def test_ui_serves_only_its_own_files(api):
    with urllib.request.urlopen(api.url + "/ui") as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert b"/ui/app.js" in response.read()
    for name in ("app.js", "app.css"):
        with urllib.request.urlopen(f"{api.url}/ui/{name}") as response:
            assert response.status == 200
    for name in ("..%2Fapp.py", ".hidden.js", "missing.js", "..%2F..%2Fapi%2Fconfig.py"):
        try:
            urllib.request.urlopen(f"{api.url}/ui/{name}")
            raise AssertionError(f"/ui/{name} was served")
        except urllib.error.HTTPError as error:
            assert error.code == 404
