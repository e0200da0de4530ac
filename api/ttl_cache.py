"""The API's one time-limited cache: answers kept a few seconds so hot routes skip a lookup
(verified keys in api/auth.py, Salad's answers and users in api/salad_auth.py)."""

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 10000  # bounds memory whatever callers send; past it expired entries go first


class TtlCache(Generic[K, V]):
    """A value is fresh for `ttl` seconds after put(); for `stale` seconds more it is still
    there for get(..., allow_stale=True), the answer to use while its source is down."""

    def __init__(self, ttl: float, stale: float = 0.0, max_entries: int = MAX_ENTRIES):
        self.ttl, self.stale, self.max_entries = ttl, stale, max_entries
        self._entries: dict[K, tuple[float, V]] = {}  # key -> (monotonic time of put, value)

    def get(self, key: K, *, allow_stale: bool = False) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = time.monotonic() - entry[0]
        if age < self.ttl or (allow_stale and age < self.ttl + self.stale):
            return entry[1]
        return None

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.max_entries:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items()
                             if now - v[0] < self.ttl + self.stale}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (time.monotonic(), value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
