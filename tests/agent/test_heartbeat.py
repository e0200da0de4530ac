"""The heartbeat thread cannot die while its job runs (agent/worker.py `Heartbeat`).

Before, a 200 whose body was not JSON (a proxy's "200 ok") raised AttributeError inside the
thread and ended it for good: no more heartbeats, the lease ran out, and the job moved to
another machine while this one still worked on it. The stand-in API here answers heartbeats
from a script the test changes as it goes.
"""

import threading
import time

import pytest

from agent.client import ApiClient
from agent.imds import Imds
from agent.worker import Heartbeat
from tests.support.loopback_http import LoopbackServer
from tests.support.net import wait_until


class HeartbeatApi(LoopbackServer):
    """Answers every heartbeat with `self.answer`: (status, payload) as LoopbackServer sends
    it (bytes as they are, None as an empty body, anything else as JSON)."""

    def __init__(self):
        super().__init__()
        self.answer = (200, {"status": "running"})
        self.beats = 0
        self._lock = threading.Lock()

    def respond(self, request):
        with self._lock:
            self.beats += 1
        return self.answer

    def beats_after(self, count: int, more: int = 3) -> None:
        """Wait until `more` heartbeats beyond `count` have arrived."""
        wait_until(lambda: self.beats >= count + more, timeout=20,
                   message=f"heartbeats stopped at {self.beats}")


@pytest.fixture
def api():
    with HeartbeatApi() as server:
        yield server


@pytest.fixture
def heartbeat(api, make_config, imds):
    config = make_config(KELPIE_API_URL=api.url, MAX_RETRIES="1")
    beat = Heartbeat(ApiClient(config, Imds(imds.url)), "job-1", interval=0.05,
                     on_beat=lambda count: beat.on_beat_calls.append(count))
    beat.on_beat_calls = []
    beat.start()
    yield beat
    beat.stop()


@pytest.mark.parametrize("answer", [
    (200, b"ok"),  # not JSON
    (200, b"\xff\xfe not even UTF-8"),
    (200, None),  # empty
    (200, []),  # JSON, but no object
    (200, "running"),  # a JSON string
    (200, {}),  # no status
    (200, {"status": None}),
    (200, {"status": 5}),
    (200, {"status": ""}),
], ids=["text", "not-utf8", "empty", "list", "string", "no-status", "null", "number", "blank"])
def test_an_answer_without_a_usable_status_does_not_stop_the_heartbeats(api, heartbeat, answer):
    api.beats_after(0)
    api.answer = answer
    api.beats_after(api.beats, more=5)
    assert heartbeat.thread.is_alive()
    assert not heartbeat.lost.is_set()
    # Such an answer confirms nothing: deletions in the bucket wait for a real "running".
    confirmed = heartbeat.last_confirmed
    api.beats_after(api.beats)
    assert heartbeat.last_confirmed == confirmed
    # The thread still hears the API once it answers properly again.
    api.answer = (200, {"status": "canceled"})
    wait_until(heartbeat.lost.is_set, timeout=20)
    assert heartbeat.lost_status == "canceled"


def test_no_exception_ends_the_thread(api, heartbeat, monkeypatch):
    api.beats_after(0)
    calls = []

    def broken(count):
        calls.append(count)
        raise RuntimeError("an unforeseen bug")

    monkeypatch.setattr(heartbeat, "on_beat", broken)
    api.beats_after(api.beats, more=5)
    assert len(calls) >= 3 and heartbeat.thread.is_alive() and not heartbeat.lost.is_set()


def test_server_errors_and_refusals_keep_the_rhythm(api, heartbeat):
    api.beats_after(0)
    for answer in [(500, b"<html>bad gateway</html>"), (401, {"error": "unauthorized"})]:
        api.answer = answer
        api.beats_after(api.beats)
        assert heartbeat.thread.is_alive() and not heartbeat.lost.is_set()
    api.answer = (409, {"error": "conflict"})
    wait_until(heartbeat.lost.is_set, timeout=20)


class SlowApi(HeartbeatApi):
    """Takes `delay` seconds over each answer, and notes when each heartbeat arrived."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.arrivals: list[float] = []

    def respond(self, request):
        self.arrivals.append(time.monotonic())
        time.sleep(self.delay)  # the slow server itself, not a wait in the test
        return super().respond(request)


@pytest.mark.parametrize("delay", [0.3, 0.7], ids=["slower-than-half", "slower-than-interval"])
def test_heartbeats_keep_a_fixed_rate_behind_a_slow_api(make_config, imds, delay):
    interval = 0.5
    with SlowApi(delay) as api:
        config = make_config(KELPIE_API_URL=api.url, MAX_RETRIES="1")
        beat = Heartbeat(ApiClient(config, Imds(imds.url)), "job-1", interval=interval)
        beat.start()
        try:
            api.beats_after(0, more=6)
        finally:
            beat.stop()
    gaps = sorted(b - a for a, b in zip(api.arrivals, api.arrivals[1:], strict=False))
    median = gaps[len(gaps) // 2]
    # Spaced by interval + latency they would be 0.8 s and 1.2 s apart; on a fixed rate they
    # are one interval apart, or right after the previous answer when it took longer.
    expected = max(interval, delay)
    assert expected - 0.05 <= median <= expected + 0.12, gaps
