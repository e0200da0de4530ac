"""Who may call what: every route of the API × every kind of caller → the status it gets.

The single source for tests/api/test_permissions.py (which runs every cell against a real API
and fails for any route of the app that has no row here) and for the table in
docs/salad-auth.md (`python -m tests.api.permission_matrix` rewrites it).

Each row: the route as the app's router names it, how to make the request for one caller
(`make(world, caller) -> (path, body)`, against resources owned by the Salad organization's
project P unless said otherwise), and the expected statuses in the order of `KINDS`.
"""

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.api.jobdefs import sync_job
from tests.api.principals import KINDS, ORG, ORG_USER, PROJECT_P

DOC = Path(__file__).resolve().parents[2] / "docs" / "salad-auth.md"
BEGIN, END = "<!-- permission-matrix:begin -->", "<!-- permission-matrix:end -->"

LABELS = {
    "admin": "admin", "user_a": "Kelpie user A", "user_b": "Kelpie user B",
    "salad_p": "Salad key, project P", "salad_q": "Salad key, project Q",
    "jwt_g": "workload JWT, group G", "jwt_h": "workload JWT, group H",
    "worker_key": "worker key (group G)", "expired_key": "expired key",
    "revoked_key": "revoked key", "anonymous": "no credentials",
}


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # as app.router names it
    shown: str  # as the docs show it
    make: object
    expected: str  # one status per KINDS entry, space-separated
    note: str = ""
    # Rows that wipe shared state run after every other row (and their admin cell last).
    destructive: bool = False

    def statuses(self) -> dict[str, int]:
        codes = [int(code) for code in self.expected.split()]
        assert len(codes) == len(KINDS), (self.method, self.route)
        return dict(zip(KINDS, codes, strict=True))


def _unique_group() -> str:
    return "cg-" + uuid.uuid4().hex[:8]


def _job(world, caller):
    return f"/jobs/{world.submit('salad_p')['id']}", None


def _job_route(suffix: str):
    def make(world, caller):
        path, _ = _job(world, caller)
        return path + suffix, None
    return make


def _work(world, caller):
    return (f"/work?machine_id={caller.machine_id}"
            f"&container_group_id={caller.container_group_id}"), None


def _report(route: str, extra: dict | None = None):
    def make(world, caller):
        job = world.held_job(caller.machine_id)
        return f"/jobs/{job['id']}/{route}", {"machine_id": caller.machine_id,
                                              "container_group_id": caller.container_group_id,
                                              **(extra or {})}
    return make


def _fresh_org_key(world, caller):
    return f"/users/me/tokens/{world.issue_key(ORG_USER)['id']}", None


def _fresh_rule_group(world, caller):
    return world.salad_api.add_group(ORG, PROJECT_P, "r-" + uuid.uuid4().hex[:8])


def _new_rule(world, caller):
    return "/scaling-rules", {"container_group_id": _fresh_rule_group(world, caller),
                              "min_replicas": 0, "max_replicas": 2,
                              "idle_threshold_seconds": 0}


def _org_rule(world, caller):
    """A rule of the organization's project P, made by its Salad key."""
    group = _fresh_rule_group(world, caller)
    status, body = world.request("salad_p", "POST", "/scaling-rules", {
        "container_group_id": group, "min_replicas": 0, "max_replicas": 2,
        "idle_threshold_seconds": 0})
    assert status == 201, body
    return f"/scaling-rules/{group}"


def _const(path: str, body=None):
    return lambda world, caller: (path, body)


#      admin A   B   P   Q   JWTG JWTH WK  exp rev anon
ROWS = [
    Row("GET", "/healthz", "GET /healthz", _const("/healthz"),
        "200 200 200 200 200 200 200 200 200 200 200", "public"),
    Row("POST", "/jobs", "POST /jobs",
        lambda w, c: ("/jobs", sync_job(container_group_id=_unique_group())),
        "202 202 202 202 202 403 403 403 403 403 401"),
    Row("POST", "/jobs/batch", "POST /jobs/batch",
        lambda w, c: ("/jobs/batch", [sync_job(container_group_id=_unique_group())]),
        "202 202 202 202 202 403 403 403 403 403 401"),
    Row("GET", "/jobs", "GET /jobs", _const("/jobs"),
        "200 200 200 200 200 403 403 403 403 403 401", "each sees only its own jobs"),
    Row("GET", "/jobs/<job_id:uuid>", "GET /jobs/:id", _job,
        "200 404 404 200 404 403 403 403 403 403 401", "a job of project P"),
    Row("GET", "/jobs/<job_id:uuid>/events", "GET /jobs/:id/events", _job_route("/events"),
        "200 404 404 200 404 403 403 403 403 403 401", "a job of project P"),
    Row("GET", "/jobs/<job_id:uuid>/webhooks", "GET /jobs/:id/webhooks",
        _job_route("/webhooks"),
        "200 404 404 200 404 403 403 403 403 403 401", "a job of project P"),
    Row("DELETE", "/jobs/<job_id:uuid>", "DELETE /jobs/:id", _job,
        "202 404 404 202 404 403 403 403 403 403 401", "a job of project P"),
    Row("DELETE", "/jobs/container-groups/<container_group_id:str>",
        "DELETE /jobs/container-groups/:id",
        lambda w, c: (f"/jobs/container-groups/{w.submit('salad_p')['container_group_id']}",
                      None),
        "200 200 200 200 200 403 403 403 403 403 401",
        "acts on the caller's own jobs only (count 0 for others)"),
    Row("GET", "/work", "GET /work", _work,
        "200 200 200 200 200 200 403 200 403 403 401",
        "for group G; JWT H is bound to another group"),
    Row("POST", "/jobs/<job_id:uuid>/heartbeat", "POST /jobs/:id/heartbeat",
        _report("heartbeat"),
        "200 404 404 200 404 200 403 200 403 403 401", "a job of P in group G it holds"),
    Row("POST", "/jobs/<job_id:uuid>/completed", "POST /jobs/:id/completed",
        _report("completed"),
        "200 404 404 200 404 200 403 200 403 403 401", "a job of P in group G it holds"),
    Row("POST", "/jobs/<job_id:uuid>/failed", "POST /jobs/:id/failed",
        _report("failed", {"exit_code": 1}),
        "202 404 404 202 404 202 403 202 403 403 401", "a job of P in group G it holds"),
    Row("GET", "/users/me", "GET /users/me", _const("/users/me"),
        "200 200 200 200 200 403 403 403 403 403 401"),
    Row("GET", "/users/me/webhook-secret", "GET /users/me/webhook-secret",
        _const("/users/me/webhook-secret"),
        "200 200 200 200 200 403 403 403 403 403 401"),
    Row("POST", "/users/me/webhook-secret", "POST /users/me/webhook-secret",
        _const("/users/me/webhook-secret"),
        "201 201 201 201 201 403 403 403 403 403 401"),
    Row("GET", "/users/me/tokens", "GET /users/me/tokens", _const("/users/me/tokens"),
        "200 200 200 200 200 403 403 403 403 403 401"),
    Row("DELETE", "/users/me/tokens/<key_id:str>", "DELETE /users/me/tokens/:id",
        _fresh_org_key,
        "404 404 404 204 204 403 403 403 403 403 401", "a key of the organization's user"),
    Row("POST", "/users", "POST /users", lambda w, c: ("/users", {"name": "made-by-" + c.kind}),
        "201 403 403 403 403 403 403 403 403 403 401"),
    Row("POST", "/users/<user_id:str>/token", "POST /users/:id/token",
        _const(f"/users/{ORG_USER}/token", {}),
        "201 403 403 403 403 403 403 403 403 403 401"),
    Row("GET", "/users/<user_id:str>/tokens", "GET /users/:id/tokens",
        _const(f"/users/{ORG_USER}/tokens"),
        "200 403 403 403 403 403 403 403 403 403 401"),
    Row("DELETE", "/users/<user_id:str>/tokens/<key_id:str>", "DELETE /users/:id/tokens/:key",
        lambda w, c: (f"/users/{ORG_USER}/tokens/{w.issue_key(ORG_USER)['id']}", None),
        "204 403 403 403 403 403 403 403 403 403 401"),
    Row("POST", "/scaling-rules", "POST /scaling-rules", _new_rule,
        "400 201 400 201 400 403 403 403 403 403 401",
        "a group of project P: 400 where the caller's Salad location is elsewhere or unknown"),
    Row("GET", "/scaling-rules", "GET /scaling-rules", _const("/scaling-rules"),
        "200 200 200 200 200 403 403 403 403 403 401"),
    Row("GET", "/scaling-rules/<container_group_id:str>", "GET /scaling-rules/:id",
        lambda w, c: (_org_rule(w, c), None),
        "200 404 404 200 404 403 403 403 403 403 401", "a rule of project P"),
    Row("PATCH", "/scaling-rules/<container_group_id:str>", "PATCH /scaling-rules/:id",
        lambda w, c: (_org_rule(w, c), {"max_replicas": 3}),
        "200 404 404 200 404 403 403 403 403 403 401", "a rule of project P"),
    Row("DELETE", "/scaling-rules/<container_group_id:str>", "DELETE /scaling-rules/:id",
        lambda w, c: (_org_rule(w, c), None),
        "204 404 404 204 404 403 403 403 403 403 401", "a rule of project P"),
    Row("GET", "/fleet/machines", "GET /fleet/machines", _const("/fleet/machines"),
        "200 200 200 200 200 403 403 403 403 403 401", "each sees only its own jobs' machines"),
    Row("GET", "/fleet/activity", "GET /fleet/activity", _const("/fleet/activity"),
        "200 200 200 200 200 403 403 403 403 403 401", "each counts only its own jobs"),
    Row("GET", "/metrics", "GET /metrics", _const("/metrics"),
        "200 403 403 403 403 403 403 403 403 403 401",
        "public with KELPIE_METRICS_PUBLIC=true"),
    Row("GET", "/ui", "GET /ui", _const("/ui"),
        "200 200 200 200 200 200 200 200 200 200 200", "the page holds no data"),
    Row("GET", "/ui/<name:str>", "GET /ui/:file", _const("/ui/app.js"),
        "200 200 200 200 200 200 200 200 200 200 200", "the dashboard's own files"),
    Row("DELETE", "/jobs", "DELETE /jobs", _const("/jobs"),
        "204 403 403 403 403 403 403 403 403 403 401", destructive=True),
    Row("DELETE", "/scaling-rules", "DELETE /scaling-rules", _const("/scaling-rules"),
        "204 403 403 403 403 403 403 403 403 403 401", destructive=True),
    Row("DELETE", "/users", "DELETE /users", _const("/users"),
        "204 403 403 403 403 403 403 403 403 403 401", destructive=True),
]


def cells():
    """(row, kind) in the order they must run: wiping rows last, their admin cell last."""
    ordered = [(row, kind) for row in ROWS if not row.destructive for kind in KINDS]
    for row in (row for row in ROWS if row.destructive):
        ordered += [(row, kind) for kind in KINDS if kind != "admin"]
    ordered += [(row, "admin") for row in ROWS if row.destructive]
    return ordered


def _mark(status: int) -> str:
    if 200 <= status < 300:
        return f"✅ {status}"
    return {404: "404 (not its own)", 400: "400", 403: "❌ 403", 401: "401"}.get(status,
                                                                            str(status))


def render() -> str:
    """The markdown table: one row per route, one column per kind of caller."""
    lines = ["| route | " + " | ".join(LABELS[kind] for kind in KINDS) + " | note |",
             "| --- " * (len(KINDS) + 2) + "|"]
    for row in ROWS:
        statuses = row.statuses()
        lines.append(f"| `{row.shown}` | " + " | ".join(_mark(statuses[kind]) for kind in KINDS)
                     + f" | {row.note} |")
    return "\n".join(lines) + "\n"


def document_section(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_document() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{render()}{END}{tail}")


if __name__ == "__main__":
    write_document()
    sys.exit(0)
