"""api/salad.py against the stand-in for Salad's public API: shapes, retries, limits."""

import threading
import time

import pytest

from api import salad
from api.config import Settings
from tests.support.salad_api import SaladApi

ORG, PROJECT = "acme", "render"


@pytest.fixture(scope="module")
def stand_in():
    server = SaladApi().start()
    yield server
    server.stop()


@pytest.fixture
def client(stand_in):
    stand_in.failures.clear()
    stand_in.delay = 0.0
    yield salad.configure(Settings(salad_api_url=stand_in.url, salad_api_key=stand_in.api_key,
                                   salad_api_backoff=0.01, salad_api_retries=3,
                                   salad_api_timeout=5.0, salad_api_concurrency=2))
    salad._client = None


def test_container_group_calls(stand_in, client):
    group_id = stand_in.add_group(ORG, PROJECT, "calls", replicas=1, status="stopped")
    found = salad.find_container_group(ORG, PROJECT, group_id)
    assert found["name"] == "calls"
    assert salad.find_container_group(ORG, PROJECT, "no-such-id") is None
    assert salad.container_group_status(salad.get_container_group(ORG, PROJECT, "calls")) == "stopped"

    salad.start_container_group(ORG, PROJECT, "calls")
    salad.set_replicas(ORG, PROJECT, "calls", 4)
    assert stand_in.group(ORG, PROJECT, "calls") == {
        "id": group_id, "name": "calls", "replicas": 4, "status": "running"}
    salad.stop_container_group(ORG, PROJECT, "calls")
    assert stand_in.group(ORG, PROJECT, "calls")["status"] == "stopped"
    salad.reallocate_instance(ORG, PROJECT, "calls", "machine-1")

    calls = stand_in.calls_to("/containers/calls")
    assert [(call.method, call.path.split("/containers/calls")[1]) for call in calls] == [
        ("GET", ""), ("POST", "/start"), ("PATCH", ""), ("POST", "/stop"),
        ("POST", "/instances/machine-1/reallocate")]
    patch = calls[2]
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"replicas": 4}
    assert all(call.api_key == stand_in.api_key for call in calls)


def test_not_found_is_its_own_error(stand_in, client):
    with pytest.raises(salad.SaladNotFound):
        salad.get_container_group(ORG, PROJECT, "never-existed")
    with pytest.raises(salad.SaladNotFound):
        salad.list_container_groups("no-such-org", PROJECT)


def test_429_is_retried_honouring_retry_after(stand_in, client):
    stand_in.add_group(ORG, PROJECT, "busy")
    stand_in.fail_next(429, times=2, retry_after="0.3", path_contains="/containers/busy")
    started = time.monotonic()
    assert salad.get_container_group(ORG, PROJECT, "busy")["name"] == "busy"
    assert time.monotonic() - started >= 0.55  # two waits of Retry-After: 0.3
    assert [call.status for call in stand_in.calls_to("/containers/busy")] == [429, 429, 200]


def test_5xx_is_retried_then_given_up(stand_in, client):
    stand_in.add_group(ORG, PROJECT, "flaky")
    stand_in.fail_next(503, times=1, path_contains="/containers/flaky")
    salad.set_replicas(ORG, PROJECT, "flaky", 2)
    assert stand_in.group(ORG, PROJECT, "flaky")["replicas"] == 2

    stand_in.fail_next(500, times=10, path_contains="/containers/flaky")
    with pytest.raises(salad.SaladError) as raised:
        salad.set_replicas(ORG, PROJECT, "flaky", 3)
    assert raised.value.status == 500
    # The first try and 3 retries, then it gives up.
    assert [call.status for call in stand_in.calls_to("/containers/flaky")][-4:] == [500] * 4
    stand_in.failures.clear()


def test_4xx_is_not_retried(stand_in, client):
    stand_in.add_group(ORG, PROJECT, "strict")
    stand_in.fail_next(400, times=1, path_contains="/containers/strict")
    with pytest.raises(salad.SaladError) as raised:
        salad.start_container_group(ORG, PROJECT, "strict")
    assert raised.value.status == 400
    assert len(stand_in.calls_to("/containers/strict")) == 1


def test_concurrent_calls_are_limited(stand_in, client):
    stand_in.add_group(ORG, PROJECT, "crowd")
    stand_in.delay = 0.2
    stand_in.max_in_flight = 0
    threads = [threading.Thread(target=salad.get_container_group, args=(ORG, PROJECT, "crowd"))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stand_in.max_in_flight == 2  # salad_api_concurrency


def test_an_unreachable_api_is_an_error_not_a_hang():
    salad.configure(Settings(salad_api_url="http://127.0.0.1:9/api/public", salad_api_key="k",
                             salad_api_retries=1, salad_api_backoff=0.01, salad_api_timeout=1.0))
    try:
        with pytest.raises(salad.SaladError) as raised:
            salad.list_container_groups(ORG, PROJECT)
        assert raised.value.status is None
    finally:
        salad._client = None


def test_without_a_key_nothing_is_sent(stand_in):
    salad.configure(Settings(salad_api_url=stand_in.url, salad_api_key=None))
    try:
        assert not salad.is_configured()
        with pytest.raises(salad.SaladNotConfigured):
            salad.list_container_groups(ORG, PROJECT)
        # A caller's own key (Salad identity) still works.
        stand_in.add_group(ORG, PROJECT, "theirs")
        names = [g["name"] for g in salad.list_container_groups(ORG, PROJECT,
                                                                  api_key=stand_in.api_key)]
        assert "theirs" in names
    finally:
        salad._client = None
