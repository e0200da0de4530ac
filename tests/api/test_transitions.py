"""Every transition of the job state machine, allowed and forbidden, on SQLite and PostgreSQL,
calling the queue in-process (api/queue.py; the table is api/states.py).

For each status a job can be in and each thing that can be done to it through the queue, the
expected outcome is written out by hand below (not derived from api/states.py, so a wrong row in
the table fails here): the status after, the events written, the webhook outbox rows written.
A forbidden step must leave the job row, its events, its outbox rows and its bans exactly as
they were, and give the queue's usual answer (None, "not recorded", or a 409).
"""

import uuid
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from api import db, queue, states
from api.errors import Conflict
from api.models import Job, JobBan, JobEvent, WebhookDelivery
from api.principal import Principal
from api.states import Action, EventKind, JobStatus
from tests.conftest import DIALECTS, queue_database

P, R, C, F, X = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED,
                 JobStatus.CANCELED)
HOLDER, OTHER = "m-holder", "m-other"
WEBHOOK = "http://127.0.0.1:9/hook"  # never sent: no sender runs in this test


@pytest.fixture(scope="module", params=DIALECTS)
def database(request, tmp_path_factory):
    with queue_database(request.param, tmp_path_factory.mktemp("transitions"), ["transitions"]):
        yield request.param


PRINCIPAL = Principal(user_id="transitions")


# --- Putting a job into a status, through the queue -------------------------------------------

def _job(status: JobStatus, **spec) -> Job:
    """A job of its own container group in `status`, reached through the queue as a worker
    would reach it; a running job is held by HOLDER."""
    group = str(uuid.uuid4())
    fields = {"command": "true", "arguments": [], "environment": {}, "webhook": WEBHOOK,
              "container_group_id": group, "max_failures": 3, "heartbeat_interval": 30,
              "max_interruptions": 100, "timeout_s": None, "compression": False, **spec}
    [job] = queue.submit(PRINCIPAL, [fields])
    if status is not P:
        assert queue.claim(PRINCIPAL, HOLDER, group).id == job.id
    if status is C:
        assert queue.complete(PRINCIPAL, job.id, HOLDER)[1]
    elif status is F:
        # Failed for good on this attempt, whatever max_failures the case asks for.
        Job.update(max_failures=1).where(Job.id == job.id).execute()
        assert queue.fail(PRINCIPAL, job.id, HOLDER)[1]
        Job.update(max_failures=fields["max_failures"]).where(Job.id == job.id).execute()
    elif status is X:
        queue.cancel(PRINCIPAL, job.id)
    job = Job.get_by_id(job.id)
    assert job.status == status
    return job


def _lose_lease(job: Job) -> None:
    """The holder stopped heartbeating a lease ago (a no-op for a job nobody holds)."""
    if job.lease_expires is not None:
        Job.update(lease_expires=db.utcnow() - timedelta(seconds=1)).where(
            Job.id == job.id).execute()


def _snapshot(job_id: str) -> dict:
    row = Job.get_or_none(Job.id == job_id)
    return {
        "job": None if row is None else dict(row.__data__),
        "events": [(e.kind, e.status, e.machine_id, e.attempt, e.exit_code, e.reason)
                   for e in JobEvent.select().where(JobEvent.job == job_id).order_by(JobEvent.id)],
        "outbox": [(d.job_status, d.body) for d in
                   WebhookDelivery.select().where(WebhookDelivery.job_id == job_id)
                   .order_by(WebhookDelivery.id)],
        "bans": sorted(b.machine_id for b in JobBan.select().where(JobBan.job == job_id)),
    }


# --- What can be done to a job, through the queue ---------------------------------------------

class Op(NamedTuple):
    # (job) -> the queue's answer as a bool: the job was claimed / the report recorded / the
    # cancel or purge done.
    run: object
    spec: dict  # job fields this operation needs
    actions: tuple  # the table's actions it takes, in order, when allowed


def _claimed(job) -> bool:
    claimed = queue.claim(PRINCIPAL, OTHER, job.container_group_id)
    assert claimed is None or claimed.id == job.id  # the group holds this job alone
    return claimed is not None


def _claim(job):
    return _claimed(job)


def _reclaim(job):
    _lose_lease(job)
    return _claimed(job)


def _reclaim_timed_out(job):
    # The attempt began longer ago than timeout_s plus a lease.
    if job.started is not None:
        Job.update(started=db.utcnow() - timedelta(hours=1)).where(Job.id == job.id).execute()
    _lose_lease(job)
    return _claimed(job)


def _report(machine, *, lease_lost=False, **fail):
    def run(job):
        if lease_lost:
            _lose_lease(job)
        if fail:
            return queue.fail(PRINCIPAL, job.id, machine, **fail)[1]
        return queue.complete(PRINCIPAL, job.id, machine)[1]
    return run


def _cancel(job):
    try:
        queue.cancel(PRINCIPAL, job.id, reason="test")
    except Conflict as refusal:
        assert refusal.status_code == 409
        assert str(refusal) == f"job {job.id} is already {job.status}"
        return False
    return True


def _purge(job):
    return queue.purge_container_group(PRINCIPAL, job.container_group_id) == 1


OPS = {
    "claim": Op(_claim, {}, (Action.CLAIM,)),
    "claim after lease lost": Op(_reclaim, {}, (Action.LOSE_LEASE, Action.CLAIM)),
    "claim after lease lost, one interruption too many":
        Op(_reclaim, {"max_interruptions": 0}, (Action.LOSE_LEASE, Action.FAIL)),
    "claim of a timed-out attempt, retries left":
        Op(_reclaim_timed_out, {"timeout_s": 1},
           (Action.END_ATTEMPT, Action.REQUEUE, Action.CLAIM)),
    "claim of a timed-out attempt, last try":
        Op(_reclaim_timed_out, {"timeout_s": 1, "max_failures": 1},
           (Action.END_ATTEMPT, Action.FAIL)),
    "completed by holder": Op(_report(HOLDER), {}, (Action.COMPLETE,)),
    "completed by another machine": Op(_report(OTHER), {}, (Action.COMPLETE,)),
    "failed by holder, retries left":
        Op(_report(HOLDER, exit_code=3, reason="boom"), {}, (Action.END_ATTEMPT, Action.REQUEUE)),
    "failed by holder, last try":
        Op(_report(HOLDER, exit_code=3, reason="boom"), {"max_failures": 1},
           (Action.END_ATTEMPT, Action.FAIL)),
    "node failure by holder":
        Op(_report(HOLDER, reason="disk full", kind="node"), {"max_failures": 1},
           (Action.END_ATTEMPT, Action.REQUEUE)),
    "failed by another machine":
        Op(_report(OTHER, exit_code=3), {}, (Action.END_ATTEMPT, Action.REQUEUE)),
    # A lost lease lets the API end the attempt, never another machine.
    "failed by another machine after the lease ran out":
        Op(_report(OTHER, lease_lost=True, exit_code=3), {},
           (Action.END_ATTEMPT, Action.REQUEUE)),
    "completed by another machine after the lease ran out":
        Op(_report(OTHER, lease_lost=True), {}, (Action.COMPLETE,)),
    # The holder's late report still counts until another machine takes the job over.
    "failed by holder after the lease ran out":
        Op(_report(HOLDER, lease_lost=True, exit_code=3), {"max_failures": 1},
           (Action.END_ATTEMPT, Action.FAIL)),
    "canceled": Op(_cancel, {}, (Action.CANCEL,)),
    "purged": Op(_purge, {}, (Action.PURGE,)),
}


class Outcome(NamedTuple):
    status: JobStatus | None  # None: the job is gone
    events: tuple  # (kind, status) of each new event
    outbox: tuple  # job_status of each new outbox row
    answer: bool = True  # the queue's answer (a claim that ends the job hands out nothing)


# Written out from ARCHITECTURE.md's diagram and docs/webhooks.md's event table. Missing
# (status, operation) pairs are forbidden: nothing may change.
EXPECTED = {
    (P, "claim"): Outcome(R, (("assigned", R),), (R,)),
    (P, "claim after lease lost"): Outcome(R, (("assigned", R),), (R,)),
    (P, "claim after lease lost, one interruption too many"): Outcome(R, (("assigned", R),), (R,)),
    (P, "claim of a timed-out attempt, retries left"): Outcome(R, (("assigned", R),), (R,)),
    (P, "claim of a timed-out attempt, last try"): Outcome(R, (("assigned", R),), (R,)),
    (R, "claim after lease lost"):
        Outcome(R, (("heartbeat_lost", R), ("assigned", R)), (R,)),
    (R, "claim after lease lost, one interruption too many"):
        Outcome(F, (("heartbeat_lost", R), ("failed", F)), (F,), answer=False),
    # Back to pending, and the same claim hands it on at once.
    (R, "claim of a timed-out attempt, retries left"):
        Outcome(R, (("attempt_failed", R), ("requeued", P), ("assigned", R)), (R,)),
    (R, "claim of a timed-out attempt, last try"):
        Outcome(F, (("attempt_failed", R), ("failed", F)), (F,), answer=False),
    (R, "completed by holder"): Outcome(C, (("completed", C),), (C,)),
    (R, "failed by holder, retries left"):
        Outcome(P, (("attempt_failed", R), ("requeued", P)), ()),
    (R, "failed by holder, last try"): Outcome(F, (("attempt_failed", R), ("failed", F)), (F,)),
    (R, "node failure by holder"): Outcome(P, (("attempt_failed", R), ("requeued", P)), ()),
    (R, "failed by holder after the lease ran out"):
        Outcome(F, (("attempt_failed", R), ("failed", F)), (F,)),
    (P, "canceled"): Outcome(X, (("canceled", X),), (X,)),
    (R, "canceled"): Outcome(X, (("canceled", X),), (X,)),
    (P, "purged"): Outcome(None, (), ()),
    (R, "purged"): Outcome(X, (("purged", X),), (X,)),
}

CASES = [(status, name) for status in states.STATUSES for name in OPS]


@pytest.mark.parametrize(("status", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_transition(database, status, name):
    op = OPS[name]
    job = _job(status, **op.spec)
    before = _snapshot(job.id)
    expected = EXPECTED.get((status, name))

    changed = op.run(job)
    after = _snapshot(job.id)

    if expected is None:
        assert not changed
        if "lease" in name or "timed-out" in name:
            # The test moved the clock for these; the queue itself must have changed nothing.
            after["job"]["lease_expires"] = before["job"]["lease_expires"]
            after["job"]["started"] = before["job"]["started"]
        assert after == before
        return

    assert changed is expected.answer
    new_events = after["events"][len(before["events"]):]
    new_outbox = after["outbox"][len(before["outbox"]):]
    if expected.status is None:
        assert after["job"] is None and after["events"] == [] and after["outbox"] == []
        return
    row = after["job"]
    assert row["status"] == expected.status
    # What each status means for the job's columns: who holds it, and until when.
    if expected.status is R:
        assert row["machine_id"] == OTHER and row["lease_expires"] > db.utcnow()
    elif expected.status is P:
        assert row["machine_id"] is None and row["heartbeat"] is None
        assert row["lease_expires"] is None
    else:
        assert row[str(expected.status)] is not None and row["lease_expires"] is None
    assert [(kind, status) for kind, status, *_ in new_events] == list(expected.events)
    assert [job_status for job_status, _ in new_outbox] == list(expected.outbox)
    assert after["events"][:len(before["events"])] == before["events"]


@pytest.mark.parametrize(("status", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_table_agrees_with_the_queue(status, name):
    """The table allows the operation's first step from this status exactly when the queue
    did something (the guard aside: the queue cases name who acts)."""
    first = OPS[name].actions[0]
    allowed = states.rule(status, first) is not None
    if (status, name) in EXPECTED:
        # Claims of pending jobs take the plain claim, whatever the case meant to test.
        assert allowed or (status is P and states.rule(P, Action.CLAIM) is not None)
    elif status in states.FINAL_STATUSES:
        assert not allowed


def test_final_statuses_have_no_way_out():
    for status in states.FINAL_STATUSES:
        for action in Action:
            assert states.rule(status, action) is None, (status, action)


def test_every_event_kind_and_status_is_reachable():
    assert {row.event for row in states.TRANSITIONS} - {None} == set(EventKind)
    assert {row.target for row in states.TRANSITIONS} - {None} == set(JobStatus)


def test_submit_writes_created(database):
    [job] = queue.submit(PRINCIPAL, [{"command": "true", "arguments": [], "environment": {},
                                      "webhook": WEBHOOK, "max_failures": 3,
                                      "heartbeat_interval": 30}])
    snapshot = _snapshot(job.id)
    assert snapshot["job"]["status"] == P
    assert [(kind, status) for kind, status, *_ in snapshot["events"]] == [("created", P)]
    assert snapshot["outbox"] == []


def test_event_details(database):
    """The details the docs promise on each event: machine, attempt, exit code, reason."""
    job = _job(R, max_failures=2)
    queue.fail(PRINCIPAL, job.id, HOLDER, exit_code=3, reason="boom")
    events = _snapshot(job.id)["events"]
    assert events == [
        ("created", P, None, None, None, None),
        ("assigned", R, HOLDER, 1, None, None),
        ("attempt_failed", R, HOLDER, 1, 3, "boom"),
        ("requeued", P, None, None, None, "1 attempt(s) left"),
    ]
    assert queue.claim(PRINCIPAL, OTHER, job.container_group_id).id == job.id
    done, recorded = queue.complete(PRINCIPAL, job.id, OTHER)
    assert recorded and done.status == C
    snapshot = _snapshot(job.id)
    assert snapshot["events"][-2:] == [("assigned", R, OTHER, 2, None, None),
                                       ("completed", C, OTHER, 2, 0, None)]
    assert snapshot["bans"] == [HOLDER]
    assert [status for status, _ in snapshot["outbox"]] == [R, R, C]


GUARD_WORDS = {
    states.Guard.ANYONE: "—",
    states.Guard.HOLDER: "the holder only",
    states.Guard.LEASE_EXPIRED: "the lease ran out",
    states.Guard.HOLDER_OR_LEASE_EXPIRED: "the holder; or the API once the lease ran out",
}


def table_lines() -> list[str]:
    """docs/states.md's transition table, one line per row of api/states.py."""
    def code(value):
        return "—" if value is None else f"`{value}`"

    lines = []
    for row in states.TRANSITIONS:
        sources = ", ".join(code(status) for status in states.STATUSES if status in row.sources)
        lines.append(f"| {sources or '(new job)'} | {row.action} | {GUARD_WORDS[row.guard]} "
                     f"| {code(row.target) if row.target else '(deleted)'} | {code(row.event)} "
                     f"| {'yes' if row.notify else '—'} |")
    return lines


def test_the_docs_show_the_table():
    text = (Path(__file__).parents[2] / "docs" / "states.md").read_text(encoding="utf-8")
    missing = [line for line in table_lines() if line not in text]
    assert not missing, "docs/states.md is out of date; these rows are missing:\n" + "\n".join(
        missing)
