"""Scaling rules, the autoscaler and machine reallocation, end to end: the API as real processes
(SQLite and PostgreSQL) against the stand-in for Salad's public API on loopback.

The autoscaler ticks every 0.3 s here; tests wait for what a tick leaves behind (the stand-in's
state, the rule's last evaluation), never for a fixed time.
"""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from api import autoscale
from tests.conftest import DIALECTS, make_database_url
from tests.support.api_process import ApiProcess
from tests.support.net import wait_until
from tests.support.salad_api import SaladApi

ORG, PROJECT = "acme", "render"
INTERVAL = 0.3


@pytest.fixture(scope="module")
def salad_api():
    server = SaladApi().start()
    yield server
    server.stop()


def _env(salad_api: SaladApi, interval: float) -> dict:
    return {
        "KELPIE_SALAD_API_URL": salad_api.url,
        "KELPIE_SALAD_API_KEY": salad_api.api_key,
        "KELPIE_AUTOSCALE_INTERVAL_S": str(interval),
        "KELPIE_SALAD_API_BACKOFF_S": "0.05",
    }


@pytest.fixture(scope="module")
def api(database_url, salad_api, api_server):
    return api_server(database_url, env=_env(salad_api, INTERVAL))


@pytest.fixture
def owner(api, request):
    """A user whose account names the Salad organization and project."""
    return api.create_user(request.node.name[:200], org=ORG, project=PROJECT)


def _name() -> str:
    return "group-" + uuid.uuid4().hex[:8]


def _rule(api, key, group_id, minimum=0, maximum=10, idle=0):
    status, body = api.request("POST", "/scaling-rules", {
        "container_group_id": group_id, "min_replicas": minimum, "max_replicas": maximum,
        "idle_threshold_seconds": idle}, key=key)
    assert status == 201, body
    return body


def _submit(api, key, group_id, count=1):
    job = {"command": "python", "arguments": ["main.py"], "container_group_id": group_id,
           "sync": {"before": [], "during": [], "after": []}}
    for _ in range(count):
        status, body = api.request("POST", "/jobs", job, key=key)
        assert status == 202, body


def _evaluation(api, key, group_id):
    status, body = api.request("GET", f"/scaling-rules/{group_id}", key=key)
    assert status == 200, body
    return body["last_evaluation"]


def _mutations(salad_api, name):
    return [(call.method, call.path.rsplit(name, 1)[1], call.body)
            for call in salad_api.calls_to(f"/containers/{name}") if call.mutating]


# --- The rule API ------------------------------------------------------------------------------

def test_create_looks_the_group_up_and_stores_where_it_lives(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, status="stopped", replicas=0)
    rule = _rule(api, owner, group_id, minimum=0, maximum=0, idle=30)
    assert rule["container_group_id"] == group_id
    assert (rule["organization_name"], rule["project_name"], rule["container_group_name"]) == (
        ORG, PROJECT, name)
    assert rule["org_name"] == ORG and rule["user_id"]  # the original's field names too
    assert (rule["min_replicas"], rule["max_replicas"], rule["idle_threshold_seconds"]) == (0, 0, 30)
    assert rule["last_evaluation"] is None
    assert rule["created"].endswith("Z")

    status, body = api.request("GET", "/scaling-rules", key=owner)
    assert status == 200 and [r["container_group_id"] for r in body["rules"]] == [group_id]
    assert body["_count"] == 1
    # One rule per group.
    status, body = api.request("POST", "/scaling-rules", {
        "container_group_id": group_id, "min_replicas": 0, "max_replicas": 1,
        "idle_threshold_seconds": 0}, key=owner)
    assert status == 409, body


def test_unknown_group_and_missing_salad_project_are_400(api, salad_api, owner):
    status, body = api.request("POST", "/scaling-rules", {
        "container_group_id": str(uuid.uuid4()), "min_replicas": 0, "max_replicas": 1,
        "idle_threshold_seconds": 0}, key=owner)
    assert status == 400 and body["field"] == "container_group_id", body
    assert "no container group" in body["message"]

    group_id = salad_api.add_group(ORG, PROJECT, _name())
    plain = api.create_user("no-salad-project")
    status, body = api.request("POST", "/scaling-rules", {
        "container_group_id": group_id, "min_replicas": 0, "max_replicas": 1,
        "idle_threshold_seconds": 0}, key=plain)
    assert status == 400 and "organization and project" in body["message"], body


@pytest.mark.parametrize("change, field", [
    ({"min_replicas": -1}, "min_replicas"),
    ({"max_replicas": 501}, "max_replicas"),
    ({"idle_threshold_seconds": 3601}, "idle_threshold_seconds"),
    ({"min_replicas": "1"}, "min_replicas"),
    ({"max_replicas": True}, "max_replicas"),
    ({"min_replicas": 5, "max_replicas": 4}, "min_replicas"),
    ({"container_group_id": ""}, "container_group_id"),
    ({"replicas": 3}, "replicas"),
])
def test_create_validation(api, owner, change, field):
    body = {"container_group_id": str(uuid.uuid4()), "min_replicas": 0, "max_replicas": 1,
            "idle_threshold_seconds": 0, **change}
    status, answer = api.request("POST", "/scaling-rules", body, key=owner)
    assert status == 400 and answer["field"] == field, answer


def test_patch_get_delete_and_tenancy(api, salad_api, owner):
    group_id = salad_api.add_group(ORG, PROJECT, _name(), replicas=3)
    _rule(api, owner, group_id, minimum=3, maximum=3, idle=0)

    status, body = api.request("PATCH", f"/scaling-rules/{group_id}", {"max_replicas": 8},
                               key=owner)
    assert status == 200 and (body["min_replicas"], body["max_replicas"]) == (3, 8), body
    status, body = api.request("PATCH", f"/scaling-rules/{group_id}", {"min_replicas": 9},
                               key=owner)
    assert status == 400 and body["field"] == "min_replicas", body
    status, body = api.request("PATCH", f"/scaling-rules/{group_id}",
                               {"idle_threshold_seconds": 4000}, key=owner)
    assert status == 400, body
    status, body = api.request("PATCH", f"/scaling-rules/{group_id}",
                               {"container_group_id": "x"}, key=owner)
    assert status == 400, body
    # The original's clients send the rule's own id back with a change: accepted.
    status, body = api.request("PATCH", f"/scaling-rules/{group_id}",
                               {"container_group_id": group_id, "max_replicas": 7}, key=owner)
    assert status == 200 and body["max_replicas"] == 7, body

    stranger = api.create_user("stranger", org=ORG, project=PROJECT)
    assert api.request("GET", f"/scaling-rules/{group_id}", key=stranger)[0] == 404
    assert api.request("PATCH", f"/scaling-rules/{group_id}", {"max_replicas": 1},
                       key=stranger)[0] == 404
    assert api.request("DELETE", f"/scaling-rules/{group_id}", key=stranger)[0] == 404
    assert api.request("GET", "/scaling-rules", key=stranger)[1] == {"_count": 0, "rules": []}
    assert api.request("DELETE", "/scaling-rules", key=stranger)[0] == 403

    # 204 and no body, as the original answers.
    assert api.request("DELETE", f"/scaling-rules/{group_id}", key=owner) == (204, None)
    assert api.request("GET", f"/scaling-rules/{group_id}", key=owner)[0] == 404


def test_admin_deletes_every_rule(api, salad_api, owner):
    group_id = salad_api.add_group(ORG, PROJECT, _name(), replicas=1)
    _rule(api, owner, group_id, minimum=1, maximum=1)
    assert api.request("DELETE", "/scaling-rules") == (204, None)
    assert api.request("GET", "/scaling-rules", key=owner)[1] == {"_count": 0, "rules": []}


# --- The evaluator -----------------------------------------------------------------------------

@pytest.mark.parametrize("status, replicas, target, calls", [
    ("running", 3, 0, [("stop",)]),
    ("deploying", 3, 0, [("stop",)]),
    ("stopped", 3, 0, []),
    ("stopped", 1, 3, [("start",), ("replicas", 1, 3)]),
    ("stopped", 3, 3, [("start",)]),
    ("running", 5, 2, [("replicas", 5, 2)]),
    ("running", 2, 2, []),
    ("deploying", 1, 4, [("replicas", 1, 4)]),
])
def test_plan(status, replicas, target, calls):
    assert autoscale.plan(status, replicas, target) == calls


def test_scale_up_from_stopped_starts_then_sets_replicas(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=1, status="stopped")
    _submit(api, owner, group_id, 3)
    _rule(api, owner, group_id, minimum=0, maximum=10)

    wait_until(lambda: salad_api.group(ORG, PROJECT, name) == {
        "id": group_id, "name": name, "replicas": 3, "status": "running"}, timeout=20)
    assert _mutations(salad_api, name)[:2] == [("POST", "/start", None),
                                               ("PATCH", "", {"replicas": 3})]
    last = wait_until(lambda: _evaluation(api, owner, group_id), timeout=20)
    assert (last["count"], last["target"], last["error"]) == (3, 3, None)


def test_scale_down_to_min_replicas(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=6, status="running")
    _submit(api, owner, group_id, 1)
    _rule(api, owner, group_id, minimum=2, maximum=10)

    wait_until(lambda: salad_api.group(ORG, PROJECT, name)["replicas"] == 2, timeout=20)
    assert salad_api.group(ORG, PROJECT, name)["status"] == "running"
    assert _mutations(salad_api, name) == [("PATCH", "", {"replicas": 2})]
    last = wait_until(lambda: _evaluation(api, owner, group_id), timeout=20)
    assert (last["count"], last["target"], last["action"]) == (1, 2, "replicas 6 -> 2")


def test_target_zero_stops_the_group(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=2, status="running")
    _rule(api, owner, group_id, minimum=0, maximum=5)

    wait_until(lambda: salad_api.group(ORG, PROJECT, name)["status"] == "stopped", timeout=20)
    # Stopped, not scaled to 0 replicas; and once stopped it is left alone.
    last_get = len(salad_api.calls_to(f"/containers/{name}", method="GET"))
    wait_until(lambda: len(salad_api.calls_to(f"/containers/{name}", method="GET")) >= last_get + 3,
               timeout=20)
    assert _mutations(salad_api, name) == [("POST", "/stop", None)]
    assert salad_api.group(ORG, PROJECT, name)["replicas"] == 2


def test_no_call_when_nothing_changes(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=2, status="running")
    _submit(api, owner, group_id, 2)
    _rule(api, owner, group_id, minimum=1, maximum=5)

    wait_until(lambda: len(salad_api.calls_to(f"/containers/{name}", method="GET")) >= 4,
               timeout=20)
    assert _mutations(salad_api, name) == []
    last = _evaluation(api, owner, group_id)
    assert (last["count"], last["target"], last["action"], last["error"]) == (2, 2, "none", None)
    assert (last["group_status"], last["group_replicas"]) == ("running", 2)


def test_recently_finished_jobs_keep_the_group_up(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=1, status="running")
    _submit(api, owner, group_id, 1)
    status, [job] = api.request(
        "GET", f"/work?machine_id=m-{name}&container_group_id={group_id}", key=owner)
    assert status == 200
    status, _ = api.request("POST", f"/jobs/{job['id']}/completed",
                            {"machine_id": f"m-{name}", "container_group_id": group_id}, key=owner)
    assert status == 200
    _rule(api, owner, group_id, minimum=0, maximum=5, idle=3600)

    wait_until(lambda: len(salad_api.calls_to(f"/containers/{name}", method="GET")) >= 3,
               timeout=20)
    assert _mutations(salad_api, name) == []
    assert _evaluation(api, owner, group_id)["count"] == 1

    # Without the idle threshold the finished job no longer counts: the group stops.
    api.request("PATCH", f"/scaling-rules/{group_id}", {"idle_threshold_seconds": 0}, key=owner)
    wait_until(lambda: salad_api.group(ORG, PROJECT, name)["status"] == "stopped", timeout=20)


def test_a_group_salad_no_longer_knows_loses_its_rule(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=1)
    _rule(api, owner, group_id, minimum=1, maximum=1)
    wait_until(lambda: _evaluation(api, owner, group_id), timeout=20)

    salad_api.remove_group(ORG, PROJECT, name)
    wait_until(lambda: api.request("GET", f"/scaling-rules/{group_id}", key=owner)[0] == 404,
               timeout=20)


def test_429_is_retried_and_failures_are_shown(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=1, status="running")
    _submit(api, owner, group_id, 4)
    salad_api.fail_next(429, times=2, retry_after="0.1", path_contains=f"/containers/{name}")
    _rule(api, owner, group_id, minimum=0, maximum=10)

    wait_until(lambda: salad_api.group(ORG, PROJECT, name)["replicas"] == 4, timeout=20)
    statuses = [call.status for call in salad_api.calls_to(f"/containers/{name}")]
    assert statuses[:3] == [429, 429, 200], statuses
    # The same tick that met the 429s scaled the group: no evaluation recorded an error.
    last = wait_until(lambda: _evaluation(api, owner, group_id), timeout=20)
    assert last["error"] is None

    # A call that keeps failing is reported on the rule, not retried forever.
    salad_api.fail_next(400, times=1, path_contains=f"/containers/{name}")
    wait_until(lambda: (_evaluation(api, owner, group_id)["error"] or "").find("HTTP 400") >= 0,
               timeout=20)


# --- Reallocation ------------------------------------------------------------------------------

def _ban(api, key, machine, group_id):
    status, work = api.request("GET", f"/work?machine_id={machine}&container_group_id={group_id}",
                               key=key)
    assert status == 200 and len(work) == 1, work
    status, body = api.request("POST", f"/jobs/{work[0]['id']}/failed",
                               {"machine_id": machine, "container_group_id": group_id,
                                "exit_code": 1}, key=key)
    assert status == 202, body


def test_machine_banned_from_five_jobs_is_reallocated_once(api, salad_api, owner):
    name = _name()
    group_id = salad_api.add_group(ORG, PROJECT, name, replicas=2)
    machine = "machine-" + uuid.uuid4().hex[:8]
    _submit(api, owner, group_id, 5)
    # Each of the first five requests is served (the fifth with four bans behind it).
    for _ in range(5):
        _ban(api, owner, machine, group_id)
    assert not [call for call in salad_api.calls_to("/reallocate") if machine in call.path]

    status, work = api.request("GET", f"/work?machine_id={machine}&container_group_id={group_id}",
                               key=owner)
    assert (status, work) == (200, [])
    realloc = f"/containers/{name}/instances/{machine}/reallocate"
    wait_until(lambda: salad_api.calls_to(realloc), timeout=20)

    # Once only: the next request is an ordinary claim again.
    _submit(api, owner, group_id, 1)
    status, work = api.request("GET", f"/work?machine_id={machine}&container_group_id={group_id}",
                               key=owner)
    assert status == 200 and len(work) == 1, work
    assert [call.method for call in salad_api.calls_to(realloc)] == ["POST"]
    # Another machine of the same group is not affected.
    other = "machine-" + uuid.uuid4().hex[:8]
    _submit(api, owner, group_id, 1)
    status, work = api.request("GET", f"/work?machine_id={other}&container_group_id={group_id}",
                               key=owner)
    assert status == 200 and len(work) == 1, work


# --- One evaluation per tick across processes --------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("dialect", DIALECTS)
def test_two_api_processes_evaluate_once_per_tick(dialect, salad_api, tmp_path):
    """Two API processes of two Sanic workers each on one database: four loops, one tick."""
    # Long enough that a slow tick on a busy machine still reads far apart from the next.
    interval = 1.5
    url, cleanup = make_database_url(dialect, tmp_path)
    env = _env(salad_api, interval)
    first = ApiProcess(url, workers=2, env=env, log_path=tmp_path / "first.log")
    second = ApiProcess(url, workers=2, env=env, log_path=tmp_path / "second.log")
    second.admin_key = first.admin_key
    try:
        # Each takes seconds to bring up its workers: started together once the database is
        # ready, they do not both try to migrate it or install the administrator key.
        first.prepare_database()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ApiProcess.start, (first, second)))
        key = first.create_user("scaler", org=ORG, project=PROJECT)
        name = _name()
        group_id = salad_api.add_group(ORG, PROJECT, name, replicas=1)
        _rule(first, key, group_id, minimum=1, maximum=1)

        reads = lambda: salad_api.calls_to(f"/containers/{name}", method="GET")  # noqa: E731
        wait_until(lambda: len(reads()) >= 7, timeout=30, interval=0.1)
        times = [call.at for call in reads()]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        # Uncoordinated, four loops would read the group four times a period, some reads a
        # small fraction of a period apart.
        assert min(gaps) > 0.6 * interval, gaps
        assert _mutations(salad_api, name) == []
    finally:
        first.stop()
        second.stop()
        cleanup()
