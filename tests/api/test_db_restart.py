"""A PostgreSQL restart while requests arrive (found by the chaos soak): while the server is
down it refuses connections, and a request then must wait it out, not answer 500; a database
that stays away past KELPIE_DB_RECONNECT_WAIT_S is a 503 JSON answer."""

import threading
import time

import pytest

from tests.support.api_process import ApiProcess
from tests.support.pg_cluster import PgCluster

# The 503 test's wait for a database that stays away (the default, 10 s, serves the others).
# Not shorter: the wait gives up before a backoff step (up to 1 s) that would overrun it, and
# at 5 s it still waits at least 0.9 of it.
RECONNECT_WAIT_S = 5.0


@pytest.fixture
def cluster_api(tmp_path, request):
    """The API on a PostgreSQL cluster of its own; `request.param`: extra environment."""
    with PgCluster() as pg:
        server = ApiProcess(pg.url, log_path=tmp_path / "api.log",
                            env=getattr(request, "param", None))
        server.start()
        yield server, pg
        server.stop()


def _stop_db(pg: PgCluster) -> None:
    pg._run("pg_ctl", "stop", "-D", str(pg.data), "-m", "fast", "-w")


def _start_db(pg: PgCluster) -> None:
    pg._pg_ctl("start")
    pg._wait_ready()


def test_requests_during_a_restart_wait_for_the_database(cluster_api):
    api, pg = cluster_api
    key = api.create_user("restart")
    _stop_db(pg)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        api.request("GET", "/jobs?page_size=10", key=key))) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the requests are now waiting on a refused database
    assert not answers
    _start_db(pg)
    for thread in threads:
        thread.join(timeout=30)
    assert [status for status, _ in answers] == [200] * 4, answers


@pytest.mark.parametrize("cluster_api", [{"KELPIE_DB_RECONNECT_WAIT_S": str(RECONNECT_WAIT_S)}],
                         indirect=True, ids=["wait-5s"])
def test_a_database_that_stays_down_is_a_503_not_a_500(cluster_api):
    api, pg = cluster_api
    key = api.create_user("down")
    _stop_db(pg)
    started = time.monotonic()
    status, body = api.request("GET", "/jobs", key=key)
    assert status == 503, (status, body)
    assert body["error"] and "database" in body["message"]
    assert time.monotonic() - started >= RECONNECT_WAIT_S * 0.9
    _start_db(pg)
    assert api.request("GET", "/jobs", key=key)[0] == 200
