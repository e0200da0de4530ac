"""The job state machine as data: the statuses, the event kinds, and the one table of which
action may move a job from which status to which, with the event it writes.

ARCHITECTURE.md draws the machine; `TRANSITIONS` is that drawing, row by row, and
docs/states.md prints it for readers. `api.queue.transition()` is the only code that applies a
row: it checks the table (and the guard the row names), writes the job's new columns, the event
and, where the row says so, the webhook outbox row, all in the caller's transaction. The claim
of a pending job on PostgreSQL runs as one SQL statement for speed (api/sql.py); that statement
takes its statuses and event kind from the same row.

The values are the strings stored in the database and shown on the wire, so making them enums
changed neither.
"""

import functools
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from api import lease


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


STATUSES = tuple(JobStatus)
# A job in one of these never changes again (only retention or a purge deletes it).
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class EventKind(StrEnum):
    """`job_events.kind`: what happened (GET /jobs/:id/events, docs/webhooks.md)."""

    CREATED = "created"
    ASSIGNED = "assigned"
    HEARTBEAT_LOST = "heartbeat_lost"
    ATTEMPT_FAILED = "attempt_failed"
    REQUEUED = "requeued"
    FAILED = "failed"
    COMPLETED = "completed"
    CANCELED = "canceled"
    PURGED = "purged"


class Action(StrEnum):
    """What is done to a job. One report can take more than one step: a failed attempt is
    END_ATTEMPT, then REQUEUE (retries left) or FAIL, in one transaction."""

    SUBMIT = "submit"
    CLAIM = "claim"
    LOSE_LEASE = "lose_lease"
    COMPLETE = "complete"
    END_ATTEMPT = "end_attempt"
    REQUEUE = "requeue"
    FAIL = "fail"
    CANCEL = "cancel"
    PURGE = "purge"


class Guard(StrEnum):
    """Who may take a step besides the status being right."""

    ANYONE = "anyone"
    # Only the machine that holds the job (it is running and assigned to that machine).
    HOLDER = "holder"
    # Only once the holder's lease ran out (no heartbeat for a lease, api/lease.py).
    LEASE_EXPIRED = "lease_expired"
    # The holder reporting; or, with no machine acting, the API itself once the lease ran out
    # (a timeout found by a claim, one interruption too many). Another machine never may.
    HOLDER_OR_LEASE_EXPIRED = "holder_or_lease_expired"


class Transition(NamedTuple):
    sources: frozenset  # statuses the step may start from (None: the job does not exist yet)
    action: Action
    guard: Guard
    target: JobStatus | None  # None: the job is deleted
    event: EventKind | None  # None: no event (a deleted job keeps no history)
    attempt: bool  # the event names the attempt number
    notify: bool  # writes a webhook outbox row (jobs that have a webhook)


def _row(sources, action, guard, target, event, *, attempt=False, notify=False) -> Transition:
    return Transition(frozenset(sources), action, guard, target, event, attempt, notify)


P, R, C, F, X = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED,
                 JobStatus.CANCELED)
A, E = Action, EventKind

TRANSITIONS: tuple[Transition, ...] = (
    _row({None}, A.SUBMIT, Guard.ANYONE, P, E.CREATED),
    _row({P}, A.CLAIM, Guard.ANYONE, R, E.ASSIGNED, attempt=True, notify=True),
    # A lost lease is taken over by the next claim: LOSE_LEASE (counted against
    # max_interruptions) then CLAIM, or FAIL when that was one interruption too many.
    _row({R}, A.CLAIM, Guard.LEASE_EXPIRED, R, E.ASSIGNED, attempt=True, notify=True),
    _row({R}, A.LOSE_LEASE, Guard.LEASE_EXPIRED, R, E.HEARTBEAT_LOST, attempt=True),
    _row({R}, A.COMPLETE, Guard.HOLDER, C, E.COMPLETED, attempt=True, notify=True),
    _row({R}, A.END_ATTEMPT, Guard.HOLDER_OR_LEASE_EXPIRED, R, E.ATTEMPT_FAILED, attempt=True),
    _row({R}, A.REQUEUE, Guard.HOLDER_OR_LEASE_EXPIRED, P, E.REQUEUED),
    _row({R}, A.FAIL, Guard.HOLDER_OR_LEASE_EXPIRED, F, E.FAILED, notify=True),
    _row({P, R}, A.CANCEL, Guard.ANYONE, X, E.CANCELED, notify=True),
    _row({R}, A.PURGE, Guard.ANYONE, X, E.PURGED, notify=True),
    # A purge deletes pending jobs outright (README: DELETE /jobs/container-groups/:id); their
    # events go with them (ON DELETE CASCADE), so none is written.
    _row({P}, A.PURGE, Guard.ANYONE, None, None),
)


@functools.cache  # a purge asks once per job; the table never changes
def rule(status: str | None, action: Action) -> Transition | None:
    """The table's row for `action` from `status`, or None: the table forbids it."""
    for row in TRANSITIONS:
        if row.action == action and status in row.sources:
            return row
    return None


def sources(action: Action) -> frozenset:
    """Every status `action` may start from."""
    return frozenset().union(*(row.sources for row in TRANSITIONS if row.action == action))


def lease_expired(lease_expires: datetime | None, now: datetime) -> bool:
    """The same test as the claim's SQL (`lease_expires < now`); a NULL lease never expires."""
    return lease_expires is not None and lease_expires < now


def permitted(row: Transition, *, holds: bool | None, expired: bool) -> bool:
    """Whether the row's guard lets this step happen: `holds` = whether the acting machine
    holds the job (None: no machine acts, the API does); `expired` = the holder's lease ran
    out."""
    if row.guard is Guard.HOLDER:
        return holds is True
    if row.guard is Guard.LEASE_EXPIRED:
        return expired
    if row.guard is Guard.HOLDER_OR_LEASE_EXPIRED:
        return holds if holds is not None else expired
    return True


def columns(row: Transition, *, now: datetime, machine_id: str | None, num_attempts: int,
            heartbeat_interval: int) -> dict:
    """The job columns a step sets, besides `status` and what the caller counts
    (num_failures, num_interruptions)."""
    if row.action is Action.CLAIM:
        return {"machine_id": machine_id, "started": now, "heartbeat": now,
                "lease_expires": now + timedelta(seconds=lease.seconds(heartbeat_interval)),
                "num_attempts": num_attempts + 1}
    if row.target is JobStatus.PENDING:
        # Back in the queue: nobody holds it, so nobody's lease runs.
        return {"machine_id": None, "heartbeat": None, "lease_expires": None}
    if row.target in FINAL_STATUSES:
        # completed / failed / canceled: the column of the same name says when.
        return {str(row.target): now, "lease_expires": None}
    return {}
