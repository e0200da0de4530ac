"""Webhook isolation (issue 11): one slow or dead receiver cannot stall other tenants'
webhooks or the API's shutdown. A real API process (SQLite and PostgreSQL), a receiver that
trickles its answer a byte at a time or never answers, and a prompt receiver beside it."""

import os
import signal
import socket
import threading
import time

import pytest

from api import egress
from tests.support.api_process import ApiProcess
from tests.support.webhook_receiver import WebhookReceiver


class Tarpit:
    """Accepts every connection and then answers nothing (`trickle=False`) or a never-ending
    status line and header, one byte every `pace` seconds."""

    def __init__(self, trickle: bool, pace: float = 0.2):
        self.trickle, self.pace = trickle, pace
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self.connections: list[socket.socket] = []
        self.accepted = threading.Semaphore(0)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slow"

    def _accept(self):
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            self.accepted.release()
            if self.trickle:
                threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection):
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.stopping.wait(self.pace):
                connection.sendall(b"a")
        except OSError:
            pass

    def close(self):
        self.stopping.set()
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def tarpit():
    pit = Tarpit(trickle=True)
    yield pit
    pit.close()


def test_a_trickling_receiver_is_cut_off_at_the_total_deadline(tarpit):
    """Each read gets a byte well within the timeout; the whole answer never comes. The send
    ends at its 1 s total deadline (on main's per-read timeout it went on for ever)."""
    outcome = {}

    def send():
        started = time.monotonic()
        try:
            egress.post(tarpit.url, b"{}", {}, timeout=1.0)
        except Exception as error:  # noqa: BLE001 - the test inspects what was raised
            outcome["error"] = error
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the send outlived its total deadline by far"
    assert isinstance(outcome["error"], TimeoutError), outcome
    assert outcome["took"] < 2.5, outcome


def test_cutoff_ends_a_send_at_once(tarpit):
    cutoff = egress.Cutoff()
    outcome = {}

    def send():
        try:
            egress.post(tarpit.url, b"{}", {}, timeout=60.0, cutoff=cutoff)
        except Exception as error:  # noqa: BLE001
            outcome["error"] = error

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    assert tarpit.accepted.acquire(timeout=10)
    fired = time.monotonic()
    cutoff.fire()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - fired < 2
    assert isinstance(outcome["error"], TimeoutError)


# --- Against the API --------------------------------------------------------------------------

SLOW_SENDER = {
    "KELPIE_WEBHOOK_POLL_S": "0.05",
    "KELPIE_WEBHOOK_CONCURRENCY": "4",  # a share of 1 per destination
    "KELPIE_WEBHOOK_TIMEOUT_S": "60",  # a dead receiver holds its sender this long
    "KELPIE_WEBHOOK_RETRY_BASE_S": "60",
}


@pytest.fixture
def slow_api(database_url, tmp_path):
    server = ApiProcess(database_url, env=SLOW_SENDER, log_path=tmp_path / "api.log")
    server.start()
    yield server
    server.stop()


def _submit(api, key, webhook):
    job = {"command": "true", "sync": {"before": [], "during": [], "after": []},
           "webhook": webhook, "container_group_id": "hooks"}
    status, body = api.request("POST", "/jobs", job, key)
    assert status == 202, body
    return body["id"]


def _claim(api, key, machine):
    status, work = api.request("GET", f"/work?machine_id={machine}&container_group_id=hooks",
                               key=key)
    assert status == 200 and work, work
    return work[0]["id"]


def test_a_dead_receiver_does_not_delay_another_tenants_webhook(slow_api):
    dead = Tarpit(trickle=False)
    try:
        slow_tenant = slow_api.create_user("slow-tenant")
        prompt_tenant = slow_api.create_user("prompt-tenant")
        # Ten notifications to a receiver that never answers: on main they took all four
        # senders for the 60 s timeout.
        for index in range(10):
            _submit(slow_api, slow_tenant, dead.url + f"/{index}")
            _claim(slow_api, slow_tenant, f"slow-{index}")
        assert dead.accepted.acquire(timeout=15)
        with WebhookReceiver() as prompt:
            job_id = _submit(slow_api, prompt_tenant, prompt.url)
            started = time.monotonic()
            _claim(slow_api, prompt_tenant, "prompt-machine")
            [received] = prompt.wait_for(job_id, 1, timeout=10)
            assert received.json["status"] == "running"
            assert time.monotonic() - started < 5
        # The dead receiver holds at most its share (1 of 4) of this process's senders.
        assert len(dead.connections) == 1, len(dead.connections)
    finally:
        dead.close()


def test_shutdown_does_not_wait_on_a_receiver(database_url, tmp_path):
    dead = Tarpit(trickle=False)
    server = ApiProcess(database_url, env=SLOW_SENDER, log_path=tmp_path / "api.log")
    server.start()
    try:
        key = server.create_user("shutdown-tenant")
        _submit(server, key, dead.url)
        _claim(server, key, "m1")
        assert dead.accepted.acquire(timeout=15), "the delivery never started"
        stopping = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
        took = time.monotonic() - stopping
        assert took < 10, f"shutdown waited {took:.1f} s on a receiver (timeout is 60 s)"
    finally:
        server.stop()
        dead.close()
