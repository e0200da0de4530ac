"""The fleet page's activity chart, counted by the database, on both dialects: which events count,
into which hour they fall, and whose they are."""

import uuid
from datetime import timedelta

import pytest

from api import db, fleet, queue
from api.models import JobEvent
from api.principal import ADMIN, Principal
from api.states import EventKind
from tests.conftest import DIALECTS, queue_database

OWNER = Principal(user_id="activity-owner")
STRANGER = Principal(user_id="activity-stranger")


@pytest.fixture(scope="module", params=DIALECTS)
def database(request, tmp_path_factory):
    with queue_database(request.param, tmp_path_factory.mktemp("activity"),
                        [OWNER.user_id, STRANGER.user_id]):
        yield request.param


def _job_of(principal: Principal) -> str:
    [job] = queue.submit(principal, [{
        "command": "true", "arguments": [], "environment": {}, "webhook": None,
        "container_group_id": str(uuid.uuid4()), "max_failures": 3, "heartbeat_interval": 30,
        "max_interruptions": 100, "timeout_s": None, "compression": False}])
    return job.id


def _event(job_id: str, hours_ago: float, status: str, kind: str = "test") -> None:
    JobEvent.create(job=job_id, at=db.utcnow() - timedelta(hours=hours_ago), kind=kind,
                    status=status, actor="system")


def test_each_event_counts_once_in_its_hour_and_only_for_its_owner(database):
    JobEvent.delete().execute()
    mine, theirs = _job_of(OWNER), _job_of(STRANGER)
    JobEvent.delete().execute()  # only the events written below
    current = db.utcnow().replace(minute=0, second=0, microsecond=0)
    minutes_in = (db.utcnow() - current).total_seconds() / 3600
    # Placed in the middle of their hours, so a test running across an hour boundary still
    # finds each in the slot it aimed at (or, at worst, moves them all by one together).
    for hours_back, status, count in ((0, "pending", 3), (1, "running", 2), (23, "completed", 1),
                                      (24, "failed", 5)):  # 24 h back is outside the chart
        for _ in range(count):
            _event(mine, hours_back + minutes_in / 2, status)
    _event(mine, minutes_in / 2, "running", kind=EventKind.ATTEMPT_FAILED)  # not an entry
    _event(mine, minutes_in / 2, "running", kind=EventKind.HEARTBEAT_LOST)  # not an entry
    _event(theirs, minutes_in / 2, "pending")

    chart = fleet.activity(OWNER)
    assert len(chart["hours"]) == 24
    assert chart["counts"]["pending"][23] == 3
    assert chart["counts"]["running"][22] == 2 and sum(chart["counts"]["running"]) == 2
    assert chart["counts"]["completed"][0] == 1 and sum(chart["counts"]["completed"]) == 1
    assert sum(chart["counts"]["failed"]) == 0
    assert sum(chart["counts"]["pending"]) == 3

    everyone = fleet.activity(Principal(user_id="admin", scope=ADMIN))
    assert sum(everyone["counts"]["pending"]) == 4
