"""The worker protocol's own database lane (issue 11): a tenant listing its jobs a thousand at a
time from many clients does not slow another tenant's heartbeats to the point of losing a
lease. Real API process, SQLite and PostgreSQL; and two API worker processes on PostgreSQL
with a rival machine waiting to take the job."""

import statistics
import threading
import time
import urllib.request

import pytest

from tests.api.jobdefs import sync_job

READERS = 6


def test_heartbeats_do_not_queue_behind_a_noisy_tenants_reads(api, user_key, database_url):
    noisy = api.create_user("noisy-lister")
    for _ in range(2):
        status, _ = api.request("POST", "/jobs/batch",
                                [sync_job(container_group_id="noise") for _ in range(1000)],
                                key=noisy)
        assert status == 202
    api.request("POST", "/jobs", sync_job(container_group_id="quiet"), key=user_key)
    status, [held] = api.request("GET", "/work?machine_id=q1&container_group_id=quiet",
                                 key=user_key)
    assert status == 200

    done = threading.Event()
    lists: list[float] = []

    def list_forever():
        while not done.is_set():
            started = time.monotonic()
            status, _ = api.request("GET", "/jobs?page_size=1000", key=noisy)
            assert status == 200
            lists.append(time.monotonic() - started)

    readers = [threading.Thread(target=list_forever) for _ in range(READERS)]
    for reader in readers:
        reader.start()
    beats = []
    try:
        while len(lists) < READERS:  # every reader is in full swing
            time.sleep(0.01)
        for _ in range(40):
            started = time.monotonic()
            status, body = api.request("POST", f"/jobs/{held['id']}/heartbeat",
                                       {"machine_id": "q1", "container_group_id": "quiet"},
                                       key=user_key)
            beats.append(time.monotonic() - started)
            assert (status, body) == (200, {"status": "running"})
    finally:
        done.set()
        for reader in readers:
            reader.join()
    beat_p50, list_p50 = statistics.median(beats), statistics.median(lists)
    print(f"heartbeat p50 {beat_p50 * 1000:.0f} ms, max {max(beats) * 1000:.0f} ms; "
          f"list p50 {list_p50 * 1000:.0f} ms")
    assert beat_p50 < list_p50 / 2, (beat_p50, list_p50)
    if database_url.startswith("sqlite"):
        # Measured on 2 cores: 15 ms with the lane, 190 ms without (queued behind the reads).
        # On PostgreSQL the reads are quick and what remains is the event loop's time spent
        # building the noisy tenant's pages (about 150 ms either way): not fixed by a lane.
        assert beat_p50 < 0.1, beat_p50


@pytest.fixture(scope="module")
def two_workers_on_postgres(postgres_url, api_server):
    """Two API worker processes on PostgreSQL: the deployment the issue measured."""
    return api_server(postgres_url, workers=2)


def _get_raw(server, path: str, key: str) -> int:
    """A GET whose body is read but not decoded: the noisy clients must load the API, not the
    test process (the heartbeat thread shares its interpreter)."""
    request = urllib.request.Request(server.url + path, headers={"X-Kelpie-Key": key})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return response.status


BEAT_SECONDS = 15


def test_a_one_second_lease_survives_a_noisy_lister_on_two_postgres_workers(
        two_workers_on_postgres):
    """A job with heartbeat_interval 1 s (lease exactly 2 s: the test API runs with no grace)
    is heartbeated at a fixed rate for 15 s while another tenant lists 1,000 jobs at a time
    from several threads, and a rival machine polls the same group all along, ready to take
    the job the moment its lease runs out. Every heartbeat must answer running, the rival must
    get nothing, and the job's history must hold no heartbeat_lost."""
    api = two_workers_on_postgres
    noisy, quiet = api.create_user("noisy-lister"), api.create_user("quiet")
    for _ in range(2):
        status, _ = api.request("POST", "/jobs/batch",
                                [sync_job(container_group_id="noise") for _ in range(1000)],
                                key=noisy)
        assert status == 202
    status, job = api.request("POST", "/jobs", sync_job(container_group_id="quiet",
                                                        heartbeat_interval=1), key=quiet)
    assert status == 202
    done = threading.Event()
    lists: list[float] = []
    stolen: list = []
    errors: list = []

    def list_forever():
        try:
            while not done.is_set():
                started = time.monotonic()
                assert _get_raw(api, "/jobs?page_size=1000", noisy) == 200
                lists.append(time.monotonic() - started)
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def rival():
        try:
            while not done.wait(0.2):
                status, body = api.request(
                    "GET", "/work?machine_id=rival&container_group_id=quiet", key=quiet)
                assert status == 200
                stolen.extend(body)
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=list_forever) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    beats, answers = [], []
    try:
        while len(lists) < READERS and not errors:  # every reader is in full swing
            time.sleep(0.01)
        # Claimed under the noise too; the lease runs from here, and only now may the rival
        # poll (before, it would simply have claimed the job first).
        status, [held] = api.request("GET", "/work?machine_id=holder&container_group_id=quiet",
                                     key=quiet)
        assert status == 200 and held["id"] == job["id"]
        threads.append(threading.Thread(target=rival))
        threads[-1].start()
        # Fixed rate, as the agent schedules them: the next beat is due one interval after the
        # previous one was due, however long that one took.
        first = time.monotonic()
        for index in range(BEAT_SECONDS):
            delay = first + index - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            started = time.monotonic()
            answers.append(api.request("POST", f"/jobs/{job['id']}/heartbeat",
                                       {"machine_id": "holder", "container_group_id": "quiet"},
                                       key=quiet))
            beats.append(time.monotonic() - started)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    beats_ms = sorted(beat * 1000 for beat in beats)
    p99 = beats_ms[min(len(beats_ms) - 1, round(0.99 * len(beats_ms)))]
    print(f"2 workers on PostgreSQL, {READERS} listers of 1000 jobs ({len(lists)} lists, p50 "
          f"{statistics.median(lists) * 1000:.0f} ms): heartbeat p50 "
          f"{statistics.median(beats_ms):.0f} ms, p99 {p99:.0f} ms, max {beats_ms[-1]:.0f} ms")
    assert answers == [(200, {"status": "running"})] * BEAT_SECONDS, answers
    assert stolen == []
    status, history = api.request("GET", f"/jobs/{job['id']}/events", key=quiet)
    assert status == 200
    assert [event["kind"] for event in history["events"]] == ["created", "assigned"], history
