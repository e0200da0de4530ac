"""A webhook receiver on loopback: records every POST, answers what the test asks for.

It can be taken down and brought back on the same port (the API's sender then sees a refused
connection, then success), made to answer errors, or made slow.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.net import free_port, wait_until


@dataclass
class Received:
    path: str
    headers: dict
    raw: bytes
    answered: int  # the status this receiver answered with
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self):
        return json.loads(self.raw)

    @property
    def delivery(self) -> str | None:
        return self.headers.get("x-kelpie-delivery")

    @property
    def signature(self) -> str | None:
        return self.headers.get("x-kelpie-signature")


class WebhookReceiver:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.lock = threading.Lock()
        self.received: list[Received] = []  # every request, answered well or not
        # Answers to give, in order; when empty, `status`.
        self.script: list[int] = []
        self.status = 200
        self.delay = 0.0
        self.response_body = b"ok"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.status
                    receiver.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, raw,
                        status))
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(receiver.response_body)))
                self.end_headers()
                self.wfile.write(receiver.response_body)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what arrived

    def for_job(self, job_id: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if item.json.get("job_id") == job_id]

    def accepted(self, job_id: str) -> list[Received]:
        """The job's requests that were answered 2xx (delivered, as the sender sees it)."""
        return [item for item in self.for_job(job_id) if 200 <= item.answered < 300]

    def wait_for(self, job_id: str, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until `count` requests for the job have arrived; returns them."""
        def arrived():
            items = self.for_job(job_id)
            return items if len(items) >= count else None
        return wait_until(arrived, timeout=timeout,
                          message=f"{count} webhook(s) for {job_id} not received "
                                  f"(got {len(self.for_job(job_id))})")
