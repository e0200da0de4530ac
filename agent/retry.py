"""The agent's one retry rule: a bounded number of attempts with exponential backoff and full
jitter between them. Every loop that tries something again (API calls, the CLI's calls, the
IMDS token at start-up, object transfers) goes through `Attempts`, so the rule is written once
and each loop reads as "for each attempt: try; stop when it worked". Who retries which call,
and how often, is in docs/agent.md, "Retries".
"""

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 10.0) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): random in
    [0, base·2^attempt], at most `cap`."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


def sleep(seconds: float, stop: threading.Event | None = None) -> bool:
    """Sleep, waking early if `stop` is set; returns True if it was set."""
    if stop is None:
        threading.Event().wait(seconds)
        return False
    return stop.wait(seconds)


class Attempts:
    """`for attempt in Attempts(n): ...` yields 1, 2, ... n and pauses (backoff_delay) before
    every attempt after the first; the body breaks or returns once an attempt worked. No pause
    follows the last attempt.

    `deadline` (a time.monotonic() value): keep going past `n` until then. `stop`: the pause
    ends early when it is set, and so does the loop (`stopped` is then True). `next_delay` is
    the pause that will follow the current attempt if it fails, for the caller's log line;
    `last` says whether the current attempt is the final one.
    """

    def __init__(self, count: int, stop: threading.Event | None = None, *,
                 deadline: float | None = None, base: float = 0.25, cap: float = 10.0):
        self.count, self.stop, self.deadline = max(1, count), stop, deadline
        self.base, self.cap = base, cap
        self.number = 0
        self.next_delay = 0.0
        self.stopped = False

    @property
    def last(self) -> bool:
        more_time = self.deadline is not None and time.monotonic() < self.deadline
        return self.number >= self.count and not more_time

    def __iter__(self) -> Iterator[int]:
        while True:
            self.number += 1
            self.next_delay = backoff_delay(self.number, self.base, self.cap)
            yield self.number
            if self.last:
                return
            if sleep(self.next_delay, self.stop):
                self.stopped = True
                return


def call(operation: Callable[[], T], attempts: int,
         retryable: Callable[[BaseException], bool]) -> T:
    """operation(), tried again (Attempts) while it raises what `retryable` accepts; the
    last error is raised once the attempts are used up."""
    tries = Attempts(attempts)
    for _ in tries:
        try:
            return operation()
        except Exception as error:
            if tries.last or not retryable(error):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")
