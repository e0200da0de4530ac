"""api.ttl_cache.TtlCache, the one time-limited cache of the API (keys, Salad answers, users)."""

import pytest

from api import ttl_cache
from api.ttl_cache import TtlCache


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(ttl_cache.time, "monotonic", lambda: now[0])
    return now


def test_a_value_is_fresh_for_ttl_seconds_then_gone(clock):
    cache = TtlCache(ttl=5)
    cache.put("k", "v")
    clock[0] += 4.9
    assert cache.get("k") == "v"
    clock[0] += 0.1
    assert cache.get("k") is None


def test_a_stale_value_is_there_only_when_asked_for_and_only_for_stale_seconds(clock):
    cache = TtlCache(ttl=5, stale=10)
    cache.put("k", "v")
    clock[0] += 6
    assert cache.get("k") is None
    assert cache.get("k", allow_stale=True) == "v"
    clock[0] += 9
    assert cache.get("k", allow_stale=True) is None


def test_put_again_restarts_the_clock_and_drop_forgets(clock):
    cache = TtlCache(ttl=5)
    cache.put("k", "old")
    clock[0] += 4
    cache.put("k", "new")
    clock[0] += 4
    assert cache.get("k") == "new"
    cache.drop("k")
    cache.drop("never there")
    assert cache.get("k") is None


def test_a_full_cache_drops_expired_entries_first_and_stays_bounded(clock):
    cache = TtlCache(ttl=5, max_entries=3)
    cache.put("old", 1)
    clock[0] += 6
    cache.put("a", 2)
    cache.put("b", 3)
    cache.put("c", 4)  # full: the expired "old" makes room
    assert [cache.get(k) for k in ("a", "b", "c")] == [2, 3, 4]
    cache.put("d", 5)  # full of fresh entries: emptied, never unbounded
    assert cache.get("d") == 5 and len(cache._entries) == 1
