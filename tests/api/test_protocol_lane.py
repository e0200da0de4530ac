"""The worker protocol's own database lane (issue 11): a tenant listing its jobs a thousand at a
time from many clients does not slow another tenant's heartbeats to the point of losing a
lease. Real API process, SQLite and PostgreSQL."""

import statistics
import threading
import time

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
