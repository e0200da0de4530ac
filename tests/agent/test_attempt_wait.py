"""An attempt waits on events, not on a polling loop (agent/worker.py `Worker._wait`).

Each thing that can end the wait (the job lost, a signal, the child's exit, the end of the
downloads) sets the worker's `wake` event; the wait answers with the outcome at once and
sleeps in between, instead of checking every 50 ms.
"""

import sys
import threading
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from agent.outcome import Lost, ShuttingDown
from agent.runner import ChildProcess
from agent.worker import TIMED_OUT, Worker


class CountingEvent(threading.Event):
    """An Event that counts how often someone slept on it."""

    def __init__(self):
        super().__init__()
        self.sleeps = 0

    def wait(self, timeout=None):
        self.sleeps += 1
        return super().wait(timeout)


@pytest.fixture
def worker(make_config):
    worker = Worker(make_config())
    worker.wake = CountingEvent()
    yield worker
    worker.storage.close()


def _heartbeat():
    return SimpleNamespace(lost=threading.Event(), lost_status=None)


def _later(action, delay=0.3):
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def test_a_lost_job_ends_the_wait_with_lost(worker):
    heartbeat = _heartbeat()

    def lose():
        heartbeat.lost_status = "canceled"
        heartbeat.lost.set()
        worker.wake.set()

    _later(lose)
    assert worker._wait(lambda: False, heartbeat) == Lost("canceled")
    assert 1 <= worker.wake.sleeps <= 2  # slept until woken, not polled


def test_a_signal_ends_the_wait_with_shutting_down(worker):
    _later(lambda: worker._on_signal(15, None))
    assert worker._wait(lambda: False, _heartbeat()) == ShuttingDown()
    assert 1 <= worker.wake.sleeps <= 2


def test_the_deadline_ends_the_wait_with_timed_out(worker):
    import time
    assert worker._wait(lambda: False, _heartbeat(), time.monotonic() + 0.3) is TIMED_OUT


def test_the_childs_exit_and_finished_downloads_wake_the_wait(worker, tmp_path):
    child = ChildProcess(sys.executable, ["-c", "import time; time.sleep(0.3)"], {},
                         tmp_path, on_exit=worker.wake.set)
    child.start()
    assert worker._wait(child.exited.is_set, _heartbeat()) is None
    assert 1 <= worker.wake.sleeps <= 2

    worker.wake = CountingEvent()
    downloads = Future()
    downloads.add_done_callback(lambda _: worker.wake.set())
    _later(lambda: downloads.set_result({}))
    assert worker._wait(downloads.done, _heartbeat()) is None
    assert 1 <= worker.wake.sleeps <= 2
