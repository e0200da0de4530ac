"""A stand-in for Salad's public API: a real HTTP server on 127.0.0.1 that keeps container-group
state (replicas, running/stopped), records every call, and can be told to answer 404 (remove a
group) or 429/5xx (fail the next calls).

Only the calls Kelpie makes are implemented, with the shapes Salad's public API uses:
    GET   /organizations/{org}/projects/{project}/containers            → {"items": [group]}
    GET   …/containers/{name}                                           → group
    POST  …/containers/{name}/start | /stop                             → 202
    PATCH …/containers/{name}  {"replicas": N}  (application/merge-patch+json) → group
    POST  …/containers/{name}/instances/{machine_id}/reallocate         → 202
under the base path /api/public, with the key in the `Salad-Api-Key` header.
"""

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.support.loopback_http import LoopbackServer, Request

BASE_PATH = "/api/public"
PATTERN = re.compile(
    r"^/organizations/(?P<org>[^/]+)/projects/(?P<project>[^/]+)/containers"
    r"(?:/(?P<name>[^/]+)(?:/(?P<action>start|stop)|/instances/(?P<machine>[^/]+)/reallocate)?)?$"
)


@dataclass
class Call:
    method: str
    path: str
    body: object
    api_key: str | None
    content_type: str | None
    status: int = 0
    at: float = field(default_factory=time.monotonic)

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


@dataclass
class Failure:
    status: int
    retry_after: str | None
    path_contains: str | None
    remaining: int


class SaladApi(LoopbackServer):
    def __init__(self, api_key: str = "salad-key-" + uuid.uuid4().hex[:8]):
        super().__init__()
        self.api_key = api_key
        self.groups: dict[tuple[str, str, str], dict] = {}
        self.projects: set[tuple[str, str]] = set()
        self.calls: list[Call] = []
        self.failures: list[Failure] = []
        # Seconds each answer waits, and the most calls seen in flight at once.
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    # --- Lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    def respond(self, request: Request):
        try:
            body = json.loads(request.raw) if request.raw else None
        except ValueError:
            body = request.raw.decode(errors="replace")
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self.handle(request.method, request.path, body,
                               request.headers.get("Salad-Api-Key"),
                               request.headers.get("Content-Type"))
        finally:
            with self.lock:
                self.in_flight -= 1

    # --- State and switches ---

    def add_group(self, org: str, project: str, name: str, *, replicas: int = 1,
                  status: str = "running") -> str:
        group_id = str(uuid.uuid4())
        with self.lock:
            self.projects.add((org, project))
            self.groups[(org, project, name)] = {"id": group_id, "name": name,
                                                 "replicas": replicas, "status": status}
        return group_id

    def remove_group(self, org: str, project: str, name: str) -> None:
        """From now on the group is unknown: every call about it answers 404."""
        with self.lock:
            del self.groups[(org, project, name)]

    def group(self, org: str, project: str, name: str) -> dict:
        with self.lock:
            return dict(self.groups[(org, project, name)])

    def fail_next(self, status: int = 429, times: int = 1, *, retry_after: str | None = None,
                  path_contains: str | None = None) -> None:
        """Answer the next `times` calls (whose path contains `path_contains`) with `status`."""
        with self.lock:
            self.failures.append(Failure(status, retry_after, path_contains, times))

    def calls_to(self, path_contains: str, *, method: str | None = None) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if path_contains in call.path
                    and (method is None or call.method == method)]

    # --- Answers ---

    def _injected_failure(self, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.remaining > 0 and (failure.path_contains is None
                                          or failure.path_contains in path):
                failure.remaining -= 1
                return failure
        return None

    def handle(self, method: str, path: str, body, api_key, content_type):
        """(status, body, headers) for one call; records it."""
        call = Call(method, path, body, api_key, content_type)
        with self.lock:
            self.calls.append(call)
            call.status, answer, headers = self._answer(method, path, body, api_key, content_type)
        return call.status, answer, headers

    def _answer(self, method, path, body, api_key, content_type):
        if api_key != self.api_key:
            return 401, {"title": "Unauthorized"}, {}
        failure = self._injected_failure(path)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return failure.status, {"title": "Injected failure"}, headers
        if not path.startswith(BASE_PATH):
            return 404, {"title": "Not Found"}, {}
        match = PATTERN.match(path[len(BASE_PATH):])
        if match is None:
            return 404, {"title": "Not Found"}, {}
        org, project, name = match["org"], match["project"], match["name"]
        if name is None:
            if method != "GET":
                return 405, {"title": "Method Not Allowed"}, {}
            if (org, project) not in self.projects:
                return 404, {"title": "Not Found"}, {}
            items = [_wire(group) for (o, p, _), group in self.groups.items()
                     if (o, p) == (org, project)]
            return 200, {"items": items}, {}
        group = self.groups.get((org, project, name))
        if group is None:
            return 404, {"title": "Not Found"}, {}
        if match["machine"] is not None:
            return (202, None, {}) if method == "POST" else (405, None, {})
        action = match["action"]
        if action is not None:
            if method != "POST":
                return 405, None, {}
            group["status"] = "running" if action == "start" else "stopped"
            return 202, None, {}
        if method == "GET":
            return 200, _wire(group), {}
        if method == "PATCH":
            if content_type != "application/merge-patch+json":
                return 415, {"title": "Unsupported Media Type"}, {}
            replicas = (body or {}).get("replicas")
            if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 500:
                return 400, {"title": "Bad Request"}, {}
            group["replicas"] = replicas
            return 200, _wire(group), {}
        return 405, None, {}


def _wire(group: dict) -> dict:
    return {"id": group["id"], "name": group["name"], "replicas": group["replicas"],
            "current_state": {"status": group["status"]}}
