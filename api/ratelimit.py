"""Failed authentications are throttled per client address: a token bucket per address.

Each failed attempt takes a token; tokens come back at `rate` per second up to `burst`. An
address with an empty bucket is answered 429 with Retry-After before its credentials are even
looked at. Buckets live in each API process (N processes allow N times the rate): enough to
turn thousands of guesses a second into a handful, without a shared store. Successful requests
cost nothing, so a busy honest client is never throttled.
"""

import math
import time

from api.errors import ApiError

MAX_TRACKED = 100_000


class TooManyFailures(ApiError):
    status_code = 429


class FailureLimiter:
    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def _tokens(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (self.burst, self.clock()))
        return min(self.burst, tokens + (self.clock() - at) * self.rate)

    def check(self, address: str) -> None:
        """429 when this address has used up its failed attempts."""
        if self.burst <= 0 or address not in self._buckets:
            return
        tokens = self._tokens(address)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate) if self.rate > 0 else 3600
            error = TooManyFailures(
                f"too many failed authentications from {address}; retry in {wait} s")
            error.headers = {"Retry-After": str(wait)}
            raise error

    def failed(self, address: str) -> None:
        if self.burst <= 0:
            return
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.clear()
        self._buckets[address] = (self._tokens(address) - 1, self.clock())
