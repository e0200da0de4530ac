"""Every kind of caller the API knows, made for real against one API process: the administrator,
two Kelpie users, Salad API keys for two projects of one organization, workload tokens for two
container groups, a worker-scoped Kelpie key, an expired key, a revoked key and nobody.

Salad's services are the loopback stand-ins of tests/support (real JWT signatures). Used by
the permission matrix (test_permissions.py) and the reproductions (test_least_privilege.py).
"""

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from tests.support.api_process import ApiProcess
from tests.support.net import wait_until
from tests.support.salad_api import SaladApi
from tests.support.salad_identity import FakeSaladIdentity, SigningKey, worker_claims

ORG, PROJECT_P, PROJECT_Q = "acme", "prod", "research"
SERVICE_USER, SERVICE_PASSWORD = "kelpie-service", "service-" + uuid.uuid4().hex
ORG_USER = f"salad:{ORG}"

# Column order of the matrix and of the table in docs/salad-auth.md.
KINDS = ("admin", "user_a", "user_b", "salad_p", "salad_q", "jwt_g", "jwt_h", "worker_key",
         "expired_key", "revoked_key", "anonymous")


def call(url: str, method: str, path: str, body=None, headers: dict | None = None):
    """One request with exactly these headers: (status, decoded body or None).

    Pages and metrics are not JSON: their body is returned as text."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _decode(response)
    except urllib.error.HTTPError as error:
        return error.code, _decode(error)


def _decode(response):
    raw = response.read()
    if not raw:
        return None
    if "json" not in (response.headers.get("Content-Type") or ""):
        return raw.decode(errors="replace")
    return json.loads(raw)


@dataclass
class Caller:
    kind: str
    headers: dict
    # The machine and container group this caller speaks for in the worker protocol.
    machine_id: str = field(default_factory=lambda: "machine-" + uuid.uuid4().hex[:8])
    container_group_id: str | None = None


class World:
    """The stand-ins, the API and one Caller per kind. Group G holds the organization's work;
    group H is another group of the same organization; group R is a group of project P with a
    scaling rule owned by the organization's project P."""

    def __init__(self, database_url: str, log_path, **env):
        self.salad_api = SaladApi().start()
        self.identity = FakeSaladIdentity(SERVICE_USER, SERVICE_PASSWORD).start()
        self.identity.add_api_key(self.salad_api.api_key, ORG)
        self.signing_key = self.identity.add_signing_key(SigningKey.ec("ec-1"))
        self.group_g = self.salad_api.add_group(ORG, PROJECT_P, "group-g")
        self.group_h = self.salad_api.add_group(ORG, PROJECT_P, "group-h")
        self.salad_api.add_group(ORG, PROJECT_Q, "group-q")
        self.api = ApiProcess(database_url, log_path=log_path, env={
            "KELPIE_SALAD_AUTH_URL": self.identity.auth_url,
            "KELPIE_SALAD_AUTH_USERNAME": SERVICE_USER,
            "KELPIE_SALAD_AUTH_PASSWORD": SERVICE_PASSWORD,
            "KELPIE_SALAD_API_URL": self.salad_api.url,
            "KELPIE_SALAD_API_KEY": self.salad_api.api_key,
            "KELPIE_SALAD_API_RETRIES": "0",
            "KELPIE_SALAD_JWKS_URL": self.identity.jwks_url,
            # Reallocation is exercised by test_least_privilege; the autoscaler stays idle.
            "KELPIE_AUTOSCALE_INTERVAL_S": "3600",
            **env,
        })

    def start(self) -> "World":
        self.api.start()
        admin = {"X-Kelpie-Key": self.api.admin_key}
        self.callers: dict[str, Caller] = {"admin": Caller("admin", admin)}
        suffix = uuid.uuid4().hex[:6]  # names are unique, and a database may hold two worlds
        self.user_a_key = self.api.create_user(f"user-a-{suffix}", org=ORG, project=PROJECT_P)
        self.callers["user_a"] = Caller("user_a", {"X-Kelpie-Key": self.user_a_key})
        self.callers["user_b"] = Caller("user_b", {
            "X-Kelpie-Key": self.api.create_user(f"user-b-{suffix}")})
        self.callers["salad_p"] = Caller("salad_p", self.salad_headers(PROJECT_P))
        self.callers["salad_q"] = Caller("salad_q", self.salad_headers(PROJECT_Q))
        # The organization's user exists once a Salad key has been used.
        assert self.request("salad_p", "GET", "/users/me")[0] == 200
        for kind, group in (("jwt_g", self.group_g), ("jwt_h", self.group_h)):
            caller = Caller(kind, {}, container_group_id=group)
            caller.headers = self.jwt_headers(caller.machine_id, group)
            self.callers[kind] = caller
        self.callers["worker_key"] = Caller("worker_key", {"X-Kelpie-Key": self.issue_key(
            ORG_USER, scope="worker", container_group_ids=[self.group_g])["token"]},
            container_group_id=self.group_g)
        expiring = self.issue_key(ORG_USER, expires_in_s=1)["token"]
        revoked = self.issue_key(ORG_USER, name="to revoke")
        status, _ = self.request("admin", "DELETE", f"/users/{ORG_USER}/tokens/{revoked['id']}")
        assert status == 204
        self.callers["revoked_key"] = Caller("revoked_key", {"X-Kelpie-Key": revoked["token"]})
        self.callers["expired_key"] = Caller("expired_key", {"X-Kelpie-Key": expiring})
        wait_until(lambda: call(self.api.url, "GET", "/users/me",
                                headers={"X-Kelpie-Key": expiring})[0] == 403,
                   timeout=10, message="the key did not expire")
        self.callers["anonymous"] = Caller("anonymous", {})
        for caller in self.callers.values():
            caller.container_group_id = caller.container_group_id or self.group_g
        # JWT H attacks group G: it speaks for its own machine but G's work.
        self.callers["jwt_h"].container_group_id = self.group_g
        return self

    def stop(self) -> None:
        self.api.stop()
        self.identity.stop()
        self.salad_api.stop()

    # --- credentials ------------------------------------------------------------------------

    def salad_headers(self, project: str) -> dict:
        return {"Salad-Api-Key": self.salad_api.api_key, "Salad-Organization": ORG,
                "Salad-Project": project}

    def jwt_token(self, machine_id: str, group: str, org: str = ORG) -> str:
        return self.signing_key.issue(worker_claims(org, machine_id=machine_id,
                                                    container_group_id=group))

    def jwt_headers(self, machine_id: str, group: str, org: str = ORG) -> dict:
        return {"Authorization": f"Bearer {self.jwt_token(machine_id, group, org)}",
                "Salad-Project": PROJECT_P}

    def issue_key(self, user_id: str, **options) -> dict:
        status, body = self.request("admin", "POST", f"/users/{user_id}/token", options)
        assert status == 201, body
        return body

    # --- requests ---------------------------------------------------------------------------

    def request(self, kind: str, method: str, path: str, body=None, headers=None):
        return call(self.api.url, method, path, body,
                    {**self.callers[kind].headers, **(headers or {})})

    def submit(self, kind: str = "salad_p", group: str | None = None, **job) -> dict:
        from tests.api.jobdefs import sync_job

        status, body = self.request(kind, "POST", "/jobs", sync_job(
            container_group_id=group or "cg-" + uuid.uuid4().hex[:8], **job))
        assert status == 202, body
        return body

    def held_job(self, machine_id: str) -> dict:
        """A job of the organization (project P, group G), running on `machine_id`: claimed
        through the worker key, which may claim any of the organization's group G work."""
        # One failure ends it, so a `failed` report never puts it back in group G's queue.
        job = self.submit("salad_p", self.group_g, max_failures=1)
        key = self.callers["worker_key"].headers
        status, work = call(self.api.url, "GET", f"/work?machine_id={machine_id}"
                            f"&container_group_id={self.group_g}", headers=key)
        assert status == 200 and [j["id"] for j in work] == [job["id"]], work
        return job
