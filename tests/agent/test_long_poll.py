"""The agent's idle polls: a long poll (GET /work?wait=N) by default, plain polling spacing
against a server that answers at once, and a shutdown that does not wait for the hold."""

import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest

from agent.worker import Worker
from tests.support.loopback_http import LoopbackServer


class WorkApi(LoopbackServer):
    """Answers GET /work with [] after `hold` seconds (0: at once, as an API that ignores
    `wait`); records each poll's query."""

    def __init__(self, hold: float = 0.0):
        super().__init__()
        self.hold = hold
        self.queries: list[dict] = []
        self.release = threading.Event()

    def respond(self, request):
        self.queries.append(parse_qs(urlparse(request.path).query))
        if self.hold:
            self.release.wait(self.hold)
        return 200, []


@pytest.fixture
def worker_for(make_config):
    workers = []

    def build(api, **env):
        worker = Worker(make_config(KELPIE_API_URL=api.url, SALAD_MACHINE_ID="m1",
                                    SALAD_CONTAINER_GROUP_ID="g1", **env))
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        worker.shutdown.set()


def test_the_agent_long_polls_by_default_and_polls_again_at_once_after_a_held_poll(worker_for):
    with WorkApi(hold=1.0) as api:
        worker = worker_for(api, KELPIE_POLL_WAIT_S="1.5", HEARTBEAT_INTERVAL_S="30")
        assert worker.config.poll_wait == 1.5
        assert worker._poll() is None
        assert api.queries[0]["wait"] == ["1.5"] and api.queries[0]["machine_id"] == ["m1"]
        assert worker._poll_pause() == 0  # held by the server: no extra sleep


def test_the_default_wait_is_twenty_seconds(make_config):
    assert make_config().poll_wait == 20


def test_against_a_server_that_ignores_wait_the_agent_keeps_plain_spacing(worker_for):
    with WorkApi(hold=0) as api:
        worker = worker_for(api, KELPIE_POLL_WAIT_S="20", HEARTBEAT_INTERVAL_S="7")
        assert worker._poll() is None
        assert api.queries[0]["wait"] == ["20"]
        assert worker._poll_pause() == 7  # answered at once: the usual interval, no hammering


def test_wait_zero_is_the_original_plain_poll(worker_for):
    with WorkApi(hold=0) as api:
        worker = worker_for(api, KELPIE_POLL_WAIT_S="0", HEARTBEAT_INTERVAL_S="7")
        assert worker._poll() is None
        assert "wait" not in api.queries[0]
        assert worker._poll_pause() == 7


def test_a_shutdown_does_not_wait_for_the_hold(worker_for):
    with WorkApi(hold=30) as api:
        worker = worker_for(api, KELPIE_POLL_WAIT_S="25")
        threading.Timer(0.5, worker.shutdown.set).start()
        started = time.monotonic()
        try:
            assert worker._poll() is None
            assert time.monotonic() - started < 10  # far sooner than the 25 s hold
        finally:
            api.release.set()
