"""The idle-fleet simulator, bounded for CI: 300 long-polling agents against a real 2-worker API
on PostgreSQL for about 20 s. Behaviour only (the machine is shared; timings are the bench's):
every submitted job is claimed exactly once, by an agent of its own group, and completed; every
waiter that gets no job is held for its whole wait and then answered []; nothing errors.
`make idle-fleet` is the full form (10,000 agents, with timings against targets)."""

import asyncio
import random
import time

import pytest

from bench.fleet_sim import FleetSim, raise_nofile
from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import ApiProcess

pytestmark = pytest.mark.slow

AGENTS = 300
# 3 agents a group: a group sees a fresh poll (one not parked when a job arrives) only about
# every 1.7 s, so a job taken by a poll that was already waiting shows that the submission
# woke it, which a fresh poll claiming it could not.
GROUPS = 100
WAIT_S = 5


@pytest.fixture(scope="module")
def fleet_api(tmp_path_factory):
    raise_nofile(AGENTS + 1024)
    name, url = postgres.create_database("fleetsim")
    server = ApiProcess(url, workers=2, log_path=tmp_path_factory.mktemp("api") / "api.log")
    server.start()
    yield server
    server.stop()
    postgres.drop_database(name)


def test_an_idle_fleet_claims_each_job_once_and_waits_out_its_polls(fleet_api):
    seed = random.randrange(2**32)
    print(f"fleet sim seed {seed}")
    rng = random.Random(seed)
    key = fleet_api.create_user("fleet-sim")
    api = fleet_api

    async def scenario():
        everything_claimed = asyncio.Event()
        expected: dict[str, str] = {}   # job id -> group
        submitted_at: dict[str, float] = {}  # single submissions: job id -> POST sent
        claimed_by: dict[str, int] = {}

        def on_claim(job_id, at, agent):
            claimed_by.setdefault(job_id, agent)
            if expected and set(claimed_by) >= set(expected):
                everything_claimed.set()

        sim = FleetSim(api.url, key, AGENTS, groups=GROUPS, wait_s=WAIT_S, on_claim=on_claim,
                       fallback_sleep_s=WAIT_S)
        runner = asyncio.ensure_future(sim.run())
        await asyncio.wait_for(sim.all_started.wait(), 120)

        # Single jobs to random groups, one at a time, then a batch into one group, so several
        # waiters of that group are woken together and must share the jobs out, one each.
        for _ in range(30):
            group = sim.group_of(rng.randrange(GROUPS))
            posting = time.monotonic()
            status, body = await asyncio.to_thread(
                api.request, "POST", "/jobs", sync_job(container_group_id=group), key=key)
            assert status in (200, 201, 202), body
            expected[body["id"]] = group
            submitted_at[body["id"]] = posting
        crowded = sim.group_of(rng.randrange(GROUPS))
        status, body = await asyncio.to_thread(
            api.request, "POST", "/jobs/batch", [sync_job(container_group_id=crowded)] * 20,
            key=key)
        assert status == 202, body
        for job in body:
            expected[job["id"]] = crowded
        if set(claimed_by) >= set(expected):
            everything_claimed.set()
        await asyncio.wait_for(everything_claimed.wait(), 120)

        # Stay parked past two whole waits, so every agent has been answered [] at least once
        # and is in a wait that began with nothing to claim; then let each finish its last poll.
        started = time.monotonic()
        while time.monotonic() - started < 2 * WAIT_S + 1:
            await asyncio.sleep(0.5)
        sim.stop()
        stats = await asyncio.wait_for(runner, WAIT_S + 90)
        return sim, stats, expected, claimed_by, submitted_at

    sim, stats, expected, claimed_by, submitted_at = asyncio.run(scenario())

    assert not stats.errors, stats.errors[:10]
    assert stats.duplicates == {}, f"jobs claimed more than once: {stats.duplicates}"
    assert set(stats.claims) == set(expected)
    for job_id, agent in claimed_by.items():
        assert sim.group_of(agent) == expected[job_id], "a job went to an agent of another group"
    assert stats.completions == len(expected)
    # Wake-ups work: most single jobs went to a poll already parked before the job was
    # submitted (without wake-ups none could: parked polls only ever answer []). A fresh
    # poll may win a few races, hence "most".
    woken = sum(1 for job_id, posted in submitted_at.items()
                if stats.claim_asked[job_id] < posted)
    assert woken >= len(submitted_at) // 2, f"only {woken} of {len(submitted_at)} jobs woke a waiter"
    for job_id in expected:
        _, job = api.request("GET", f"/jobs/{job_id}", key=key)
        assert job["status"] == "completed", job

    # Long-poll held every empty answer for the wait it asked for: none came back early
    # (which would mean the server ignored `wait`), and every agent's last poll ended [].
    assert stats.short_empty_answers == 0
    assert min(stats.held_s) >= WAIT_S * 0.8, min(stats.held_s)
    assert stats.empty_answers >= AGENTS
    assert sum(stats.last_answer_empty.values()) == AGENTS
