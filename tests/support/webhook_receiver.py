"""A webhook receiver on loopback: records every POST, answers what the test asks for.

It can be taken down and brought back on the same port (the API's sender then sees a refused
connection, then success), made to answer errors, or made slow.
"""

import json
import threading
import time
from dataclasses import dataclass, field

from tests.support.loopback_http import LoopbackServer, Request
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


class WebhookReceiver(LoopbackServer):
    def __init__(self, port: int | None = None):
        # The port is fixed up front: tests give the URL to jobs before the receiver is up.
        super().__init__(port or free_port())
        self.lock = threading.Lock()
        self.received: list[Received] = []  # every request, answered well or not
        # Answers to give, in order; when empty, `status`.
        self.script: list[int] = []
        self.status = 200
        self.delay = 0.0
        self.response_body = b"ok"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def respond(self, request: Request):
        with self.lock:
            status = self.script.pop(0) if self.script else self.status
            self.received.append(Received(
                request.path, {k.lower(): v for k, v in request.headers.items()}, request.raw,
                status))
        if self.delay:
            time.sleep(self.delay)
        return status, self.response_body

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
