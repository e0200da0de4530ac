"""A stand-in for Salad's instance metadata service on loopback, recording every call.

Tests point the agent's KELPIE_IMDS_URL at it. Routes live in one table (`routes`), keyed by
(method, path), each a function (server, body) -> (status, json): to add an endpoint (e.g. JWT
issuing), subclass and extend `routes()` or call `add_route()`.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeImds:
    def __init__(self, jwt: str = "test-jwt"):
        self.jwt = jwt
        self.calls: list[dict] = []
        self.deletion_cost: int | None = None
        self.reallocations: list[str] = []
        self._lock = threading.Lock()
        self._routes = self.routes()
        self._server: ThreadingHTTPServer | None = None

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

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeImds":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                call = {"method": self.command, "path": self.path, "body": body,
                        "metadata_header": self.headers.get("Metadata")}
                with fake._lock:
                    fake.calls.append(call)
                handler = fake._routes.get((self.command, self.path))
                if self.headers.get("Metadata") != "true":
                    status, payload = 400, {"error": "Metadata: true header required"}
                elif handler is None:
                    status, payload = 404, {"error": "not found"}
                else:
                    status, payload = handler(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="fake-imds").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
