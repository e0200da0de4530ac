"""Exponential backoff with full jitter, shared by the API client and the storage layer."""

import random
import threading


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 10.0) -> float:
    """Seconds to wait before retry number `attempt` (1-based): random in [0, base·2^attempt]."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


def sleep(seconds: float, stop: threading.Event | None = None) -> bool:
    """Sleep, waking early if `stop` is set; returns True if it was set."""
    if stop is None:
        threading.Event().wait(seconds)
        return False
    return stop.wait(seconds)
