"""Database resilience against a real PostgreSQL: when the server drops the API's connections
(a restart, a failover; here pg_terminate_backend), the next requests reconnect and are
retried once on a fresh connection. No caller sees a 500."""

import threading

import pytest

from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import ApiProcess


@pytest.fixture
def pg_api(tmp_path):
    name, url = postgres.create_database("reconnect")
    server = ApiProcess(url, log_path=tmp_path / "api.log")
    server.start()
    yield server, name
    server.stop()
    postgres.drop_database(name)


def _traffic(api, key, group, answers, rounds=3):
    """What a tenant and its worker do: submit, read, claim, heartbeat, complete."""
    for _ in range(rounds):
        status, job = api.request("POST", "/jobs", sync_job(container_group_id=group), key=key)
        answers.append(("submit", status))
        answers.append(("get", api.request("GET", f"/jobs/{job['id']}", key=key)[0]
                        if status == 202 else status))
        status, work = api.request("GET", f"/work?machine_id=m-{group}&container_group_id={group}",
                                   key=key)
        answers.append(("claim", status))
        if status == 200 and work:
            body = {"machine_id": f"m-{group}", "container_group_id": group}
            answers.append(("heartbeat", api.request(
                "POST", f"/jobs/{work[0]['id']}/heartbeat", body, key=key)[0]))
            answers.append(("completed", api.request(
                "POST", f"/jobs/{work[0]['id']}/completed", body, key=key)[0]))


def test_dropped_connections_are_reconnected_without_a_500(pg_api):
    api, database_name = pg_api
    key = api.create_user("reconnect")
    for round_number in range(3):
        # Every pooled connection has been used (four threads at once), then all are killed.
        warm = []
        threads = [threading.Thread(target=_traffic, args=(api, key, f"warm{i}", warm, 1))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(status < 500 for _, status in warm), warm
        assert postgres.terminate_connections(database_name) >= 1, "the API held no connection"

        answers = []
        threads = [threading.Thread(target=_traffic, args=(api, key, f"g{round_number}{i}",
                                                           answers))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failures = [(what, status) for what, status in answers if status >= 500]
        assert not failures, f"round {round_number}: {failures}"
        assert {what for what, _ in answers} >= {"submit", "get", "claim", "heartbeat",
                                                  "completed"}
    assert "retrying on a new connection" in (api.log_path.read_text())
