"""A stand-in for Salad's instance metadata service on loopback, recording every call.

Tests point the agent's KELPIE_IMDS_URL at it. Routes live in one table (`routes`), keyed by
(method, path), each a function (server, body) -> (status, json): to add an endpoint (e.g. JWT
issuing), subclass and extend `routes()` or call `add_route()`.
"""

import threading

from tests.support.loopback_http import LoopbackServer, Request


class FakeImds(LoopbackServer):
    def __init__(self, jwt: str = "test-jwt"):
        super().__init__()
        self.jwt = jwt
        self.calls: list[dict] = []
        self.deletion_cost: int | None = None
        self.reallocations: list[str] = []
        self._lock = threading.Lock()
        self._routes = self.routes()

    # --- endpoints ---

    def routes(self) -> dict:
        return {
            ("GET", "/v1/token"): lambda body: (200, {"jwt": self.jwt}),
            ("GET", "/v1/status"): lambda body: (200, {"ready": True, "started": True}),
            ("PUT", "/v1/deletion-cost"): self._put_deletion_cost,
            ("GET", "/v1/deletion-cost"): lambda body: (
                200, {"deletion_cost": self.deletion_cost or 0}),
            ("POST", "/v1/reallocate"): self._reallocate,
        }

    def add_route(self, method: str, path: str, handler) -> None:
        self._routes[(method, path)] = handler

    def _put_deletion_cost(self, body):
        self.deletion_cost = int(body["deletion_cost"])
        return 200, {}

    def _reallocate(self, body):
        self.reallocations.append(body.get("reason", ""))
        return 202, {}

    # --- queries for tests ---

    def calls_to(self, method: str, path: str) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["method"] == method and c["path"] == path]

    def deletion_costs(self) -> list[int]:
        return [c["body"]["deletion_cost"] for c in self.calls_to("PUT", "/v1/deletion-cost")]

    # --- server ---

    def respond(self, request: Request):
        body = request.json
        metadata = request.headers.get("Metadata")
        with self._lock:
            self.calls.append({"method": request.method, "path": request.path, "body": body,
                               "metadata_header": metadata})
        handler = self._routes.get((request.method, request.path))
        if metadata != "true":
            return 400, {"error": "Metadata: true header required"}
        if handler is None:
            return 404, {"error": "not found"}
        return handler(body)
