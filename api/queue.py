"""The job queue: the only code that changes a job's state.

Every status change goes through `transition()` (or its batch form `transition_all()`), which
applies one row of the table in api/states.py: it checks the row's guard, then writes the job's
columns, its event and its webhook outbox row in the caller's transaction. The one exception is
the PostgreSQL claim of a pending job, a single statement built from the same row (api/sql.py).
Route handlers parse and authorise; they never write a job themselves. All functions are
synchronous and run on the database thread pool (see `api.db.run`).
"""

import threading
import uuid
import weakref
from datetime import timedelta

from peewee import SQL, Select, fn
from psycopg2.errors import DuplicatePreparedStatement

from api import db, keys, lease, metrics, serialize, sql, states, wakeups, webhooks
from api.errors import Conflict, Forbidden, NotFound
from api.models import Job, JobBan, JobEvent
from api.principal import Principal
from api.states import FINAL_STATUSES, STATUSES, Action, JobStatus

# The status names are kept importable from here (api/routes, api/fleet.py, api/autoscale.py
# use them); they are the enum members of api/states.py, defined once there.
__all__ = ["FINAL_STATUSES", "STATUSES"]

PENDING = JobStatus.PENDING
RUNNING = JobStatus.RUNNING
COMPLETED = JobStatus.COMPLETED
FAILED = JobStatus.FAILED
CANCELED = JobStatus.CANCELED


SYSTEM_ACTOR = "system"


def _owned(query, principal: Principal):
    """Restrict a job query to what the caller may see: the admin sees everything; a tenant
    its own jobs; a Salad principal only those of its project; a worker credential only its
    container groups'."""
    if principal.is_admin:
        return query
    query = query.where(Job.user == principal.user_id)
    if principal.project is not None:
        query = query.where(Job.project == principal.project)
    if principal.container_group_ids is not None:
        query = query.where(Job.container_group_id.in_(list(principal.container_group_ids)))
    return query


class TransitionRaced(RuntimeError):
    """A step the table allowed for the locked row matched no row when written. The row lock
    (FOR UPDATE, or SQLite's BEGIN IMMEDIATE) makes this impossible; if it happens anyway the
    transaction is rolled back rather than left half written."""


def transition(job: Job, action: Action, *, now, actor: str, machine_id: str | None = None,
               reason: str | None = None, exit_code: int | None = None,
               notify_reason: str | None = None, **counts) -> Job | None:
    """Take one step of the state machine (api/states.py) for `job`, read with every column
    under lock in the caller's write transaction. Returns the job as the step left it, or None
    when the table forbids the step from the job's status or its guard refuses: then nothing is
    written, and the caller gives its own answer (409, or "nothing changed").

    `machine_id`: the machine acting, which for CLAIM becomes the holder; a step guarded by
    HOLDER is allowed only when it holds the job. `reason` and `exit_code` go into the event,
    `notify_reason` into the webhook body; `counts` are further columns the step sets
    (num_failures, num_interruptions).
    """
    row = states.rule(job.status, action)
    if row is None or not states.permitted(
            row, holds=None if machine_id is None else _holds(job, machine_id),
            expired=states.lease_expired(job.lease_expires, now)):
        return None
    changes = {**states.columns(row, now=now, machine_id=machine_id,
                                num_attempts=job.num_attempts,
                                heartbeat_interval=job.heartbeat_interval), **counts}
    if row.target != job.status:
        changes["status"] = row.target
    if changes:
        # The status the row was read with is part of the statement's guard.
        updated = Job.update(**changes).where(Job.id == job.id,
                                              Job.status == job.status).execute()
        if updated != 1:
            raise TransitionRaced(f"job {job.id}: {action} from {job.status} matched no row")
    after = Job(**{**job.__data__, **changes})
    JobEvent.insert(job=job.id, at=now, kind=row.event, status=row.target,
                    machine_id=after.machine_id,
                    attempt=after.num_attempts if row.attempt else None,
                    exit_code=exit_code, reason=reason, actor=actor).execute()
    if row.notify:
        webhooks.enqueue(after, row.target, now, reason=notify_reason)
    if row.target is JobStatus.PENDING:
        wakeups.job_claimable([job.container_group_id])
    return after


def transition_all(jobs: list[Job], action: Action, *, now, actor: str,
                   reason: str | None = None) -> int:
    """The batch form of `transition()` for steps whose columns do not depend on the job and
    that name no machine (a purge): one statement per kind of write for the whole batch.
    `jobs` need `id`, `status` and `machine_id` (and `lease_expires` for a step guarded by the
    lease; without it the lease counts as running). Jobs the table forbids are left alone;
    returns how many were changed (or deleted)."""
    batches: dict[states.Transition, list[Job]] = {}
    for job in jobs:
        row = states.rule(job.status, action)
        if row is None:
            continue
        # Most batch steps are open to anyone: the lease is looked at only when it matters.
        if row.guard is states.Guard.ANYONE or states.permitted(
                row, holds=None,
                expired=states.lease_expired(getattr(job, "lease_expires", None), now)):
            batches.setdefault(row, []).append(job)
    for row, batch in batches.items():
        if row.action is Action.CLAIM:
            raise ValueError("a claim sets per-job columns: use transition()")
        ids = [job.id for job in batch]
        guard = (Job.id.in_(ids), Job.status.in_(list(row.sources)))
        if row.target is None:
            done = Job.delete().where(*guard).execute()
        else:
            changes = {"status": row.target,
                       **states.columns(row, now=now, machine_id=None, num_attempts=0,
                                        heartbeat_interval=0)}
            done = Job.update(**changes).where(*guard).execute()
        if done != len(ids):
            raise TransitionRaced(f"{action}: {done} of {len(ids)} jobs matched")
        if row.event is not None:
            JobEvent.insert_many([
                {"job": job.id, "at": now, "kind": row.event, "status": row.target,
                 "machine_id": job.machine_id, "actor": actor, "reason": reason}
                for job in batch
            ]).execute()
        if row.notify:
            for job in Job.select().where(Job.id.in_(ids), Job.webhook.is_null(False)):
                webhooks.enqueue(job, row.target, now)
        if row.target is JobStatus.PENDING:
            wakeups.job_claimable({job.container_group_id for job in batch})
    return sum(len(batch) for batch in batches.values())


def _require_key(principal: Principal) -> None:
    """403 when the caller's Kelpie key is gone: the hot statements found nothing, and the
    principal may have come from a cache (api/auth.py)."""
    if principal.key_hash is not None and not keys.is_valid(principal.key_hash):
        raise Forbidden("invalid X-Kelpie-Key")


def _get_locked(principal: Principal, job_id: str) -> Job:
    job = db.locked(_owned(Job.select(), principal).where(Job.id == job_id)).first()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


# --- Submitting and reading -------------------------------------------------------------------

def submit(principal: Principal, specs: list[dict]) -> list[Job]:
    """Create jobs from validated specs, all or nothing."""
    now = db.utcnow()
    created = states.rule(None, Action.SUBMIT)
    rows = []
    for position, spec in enumerate(specs):
        rows.append({
            **spec,
            "id": str(uuid.uuid4()),
            "user": principal.user_id,
            "organization": principal.organization,
            "project": principal.project,
            "status": created.target,
            # One microsecond apart, so a batch is claimed in the order it was given (claims
            # take the oldest `created` first); the wire shows milliseconds, so nobody sees it.
            "created": now + timedelta(microseconds=position),
        })
    with db.write_transaction():
        db.insert_rows(Job, rows)
        db.insert_rows(JobEvent, [{"job": row["id"], "at": now, "kind": created.event,
                                   "status": created.target, "actor": principal.actor}
                                  for row in rows])
        # Long-polling workers of these groups are woken when (and only if) this commits.
        wakeups.job_claimable(row.get("container_group_id") for row in rows)
    defaults = Job._meta.get_default_dict()
    return [Job.holding({**defaults, **row}) for row in rows]


def get(principal: Principal, job_id: str) -> Job:
    job = _owned(Job.select(), principal).where(Job.id == job_id).first()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_window_refusal(page: int, page_size: int, window: int) -> str | None:
    """Why a page lies beyond the listing window (None if it does not). Every page costs at
    most `window` rows: an OFFSET walks every row it skips, so page=10000 with page_size=1000
    would walk ten million of them while holding a database connection."""
    if page * page_size > window:
        return (f"page × page_size may be at most {window} (the listing window); "
                "narrow the listing with status or container_group_id, or use asc=true "
                "for the oldest jobs")
    return None


def _list_query(principal: Principal, status, container_group_id):
    query = _owned(Job.select(), principal)
    if status:
        query = query.where(Job.status == status)
    if container_group_id:
        query = query.where(Job.container_group_id == container_group_id)
    return query


def list_queries(principal: Principal, *, status=None, container_group_id=None, page=1,
                 page_size=100, ascending=False, window=100_000):
    """The two statements of a list page: the count (of at most `window` rows) and the page.
    Apart so a test can EXPLAIN exactly what the route runs."""
    query = _list_query(principal, status, container_group_id)
    # Counting the rows of a LIMITed subquery stops after `window` + 1 index entries (the one
    # more tells "exactly window" from "more"), whatever the tenant holds; selecting only the
    # indexed columns lets PostgreSQL answer it from the index alone.
    window_rows = query.select(SQL("1")).limit(window + 1).alias("window_rows")
    counted = Select([window_rows], [fn.COUNT(SQL("1"))])
    order = (Job.created.asc(), Job.id.asc()) if ascending else (Job.created.desc(), Job.id.desc())
    # The page's ids first, then their rows: the OFFSET skips index entries only (an index-only
    # scan of the listing's index), not whole job rows, and only page_size rows are fetched.
    page_ids = query.select(Job.id).order_by(*order).paginate(page, page_size)
    rows = Job.select().where(Job.id.in_(page_ids)).order_by(*order)
    return counted, rows


def list_jobs(principal: Principal, *, status=None, container_group_id=None, page=1,
              page_size=100, ascending=False, window=100_000) -> tuple[int, bool, list[Job]]:
    """(count, capped, jobs): the count is exact below `window` and `window` (capped) at or
    above it. Pages past the window are refused by the route (list_window_refusal), so with
    the indexes of migration 0008 a page never walks more than `window` + page_size rows."""
    counted, rows = list_queries(principal, status=status, container_group_id=container_group_id,
                                 page=page, page_size=page_size, ascending=ascending,
                                 window=window)
    count = counted.scalar(db.database)
    return min(count, window), count > window, list(rows)


def events(principal: Principal, job_id: str) -> list[JobEvent]:
    get(principal, job_id)
    return list(JobEvent.select().where(JobEvent.job == job_id).order_by(JobEvent.id))


# --- The worker protocol ----------------------------------------------------------------------

# A claim that finds stale jobs which must end instead of being handed on (too many
# interruptions, timed out) looks again; this bounds the work one poll can do.
MAX_RECLAIMS_PER_CLAIM = 20

TOO_MANY_INTERRUPTIONS = "too many interruptions"
TIMED_OUT = "timed out"


def claim(principal: Principal, machine_id: str, container_group_id: str | None) -> Job | None:
    """Assign the next job to `machine_id`: the oldest running job whose lease ran out, else
    the oldest pending one, never one this machine is banned from.

    Taking over a lost lease counts an interruption; a job past its `max_interruptions`, or whose
    attempt has run past `timeout_s` (plus a lease), is ended or requeued here instead and the
    claim looks again.
    """
    now = db.utcnow()
    if db.is_postgres():
        # The common case in one statement and one round trip; a group with a stale running
        # job goes the long way below.
        claimed, stale = _claim_pending_pg(principal, machine_id, container_group_id, now)
        if not stale:
            return claimed
    interruptions = 0
    job = None
    with db.write_transaction():
        for _ in range(MAX_RECLAIMS_PER_CLAIM):
            row = db.database.execute_sql(*sql.claim_candidate(
                db.dialect(), principal.user_id, machine_id, container_group_id, now,
                project=principal.project, key_hash=principal.key_hash)).fetchone()
            if row is None:
                _require_key(principal)  # nothing found: no work, or the key is gone?
                break
            candidate = Job.get_by_id(row[1])  # locked by the candidate statement
            if candidate.status == RUNNING:
                if _timed_out(candidate, now):
                    # The API ends the attempt itself (the lease ran out): no machine acts.
                    _charge_failure(candidate, now, actor=SYSTEM_ACTOR, machine_id=None,
                                    reason=TIMED_OUT, ban=False)
                    continue
                interruptions += 1
                candidate = _interrupt(candidate, machine_id, now)
                if candidate is None:
                    continue
            job = _assign(candidate, principal, machine_id, now)
            break
    metrics.INTERRUPTIONS.inc(interruptions)  # counted once the hand-over is committed
    return job


# Connection -> names of the statements PREPAREd on it: the claim and the heartbeat, the two
# that run on every poll and every beat. Planning the claim's CTEs cost PostgreSQL about as
# much CPU as running them, and planning the heartbeat's UPDATE as much as executing it
# (0.14 ms each); a prepared statement is planned once per connection (and variant: with or
# without project, group, key, the lease grace).
_prepared: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def _execute_prepared(statement: str, params: list, before: str = ""):
    connection = db.database.connection()
    name, prepare = sql.prepared(statement)
    with _prepared_lock:
        names = _prepared.setdefault(connection, set())
    if name not in names:
        try:
            db.database.execute_sql(prepare)
        except DuplicatePreparedStatement:
            pass  # prepared before, but the answer was lost: it is there all the same
        names.add(name)
    return db.database.execute_sql(*sql.execute_prepared(name, params, before))


def _claim_pending_pg(principal: Principal, machine_id: str, container_group_id, now):
    """(job or None, whether a stale running job must be dealt with first)."""
    cursor = _execute_prepared(*sql.claim_pending_pg(
        principal.user_id, machine_id, container_group_id, now, actor=principal.actor,
        timestamp=serialize.timestamp(now), project=principal.project,
        key_hash=principal.key_hash), before=sql.CLAIM_PENDING_PG_BEFORE)
    row = cursor.fetchone()
    stale, key_ok = row[0], row[1]
    if stale:
        return None, True
    if not key_ok:
        raise Forbidden("invalid X-Kelpie-Key")
    if row[2] is None:
        return None, False
    fields = [Job._meta.columns[description.name] for description in cursor.description[2:]]
    return Job.holding({field.name: field.python_value(value)
                        for field, value in zip(fields, row[2:], strict=True)}), False


def _timed_out(job: Job, now) -> bool:
    """The attempt has run longer than the job allows, plus one lease for its holder to have
    noticed and reported it."""
    if job.timeout_s is None or job.started is None:
        return False
    limit = job.timeout_s + lease.seconds(job.heartbeat_interval)
    return now >= job.started + timedelta(seconds=limit)


def _interrupt(job: Job, machine_id: str, now) -> Job | None:
    """Count the holder's lost lease; returns the job, ready to be handed on. None when that was
    one interruption too many (the job is failed), or the lease has not run out after all."""
    count = job.num_interruptions + 1
    allowed = count <= job.max_interruptions
    # When it is one too many, the FAIL below writes the count with the status, in one UPDATE.
    lost = transition(job, Action.LOSE_LEASE, now=now, actor=SYSTEM_ACTOR,
                      reason=f"no heartbeat from {job.machine_id}; "
                             + (f"handed to {machine_id}; " if allowed else "")
                             + f"interruption {count} of max_interruptions={job.max_interruptions}",
                      **({"num_interruptions": count} if allowed else {}))
    if lost is None or allowed:
        return lost
    transition(lost, Action.FAIL, now=now, actor=SYSTEM_ACTOR, reason=TOO_MANY_INTERRUPTIONS,
               notify_reason=TOO_MANY_INTERRUPTIONS, num_interruptions=count)
    return None


def _assign(job: Job, principal: Principal, machine_id: str, now) -> Job | None:
    if transition(job, Action.CLAIM, now=now, actor=principal.actor,
                  machine_id=machine_id) is None:
        return None
    return Job.get_by_id(job.id)  # the claim's answer, as stored


def heartbeat(principal: Principal, job_id: str, machine_id: str) -> str:
    """Record that `machine_id` still runs the job; answer the status the machine should act on.

    A machine that no longer holds the job is told `canceled`, so a zombie stops its copy.
    """
    if principal.is_admin:
        statement = sql.heartbeat(db.dialect(), job_id, machine_id, None, db.utcnow(),
                                  key_hash=principal.key_hash)
    else:
        statement = sql.heartbeat(db.dialect(), job_id, machine_id, principal.user_id,
                                  db.utcnow(), project=principal.project,
                                  container_group_ids=principal.container_group_ids,
                                  key_hash=principal.key_hash)
    if db.is_postgres():
        cursor = _execute_prepared(*statement, before=sql.NO_FLUSH_WAIT)
    else:
        cursor = db.database.execute_sql(*statement)
    if cursor.rowcount == 1:
        return RUNNING
    _require_key(principal)
    job = _owned(Job.select(Job.status, Job.machine_id), principal).where(Job.id == job_id).first()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.machine_id == machine_id and job.status != PENDING:
        return job.status
    return CANCELED


def _holds(job: Job, machine_id: str) -> bool:
    return job.status == RUNNING and job.machine_id == machine_id


def complete(principal: Principal, job_id: str, machine_id: str) -> tuple[Job, bool]:
    """Record the holder's completion. Returns the job and whether this report changed it.

    A report from a machine that does not hold the job (late: the job was canceled, handed on
    or already finished; or repeated after a lost answer) changes nothing and is answered with
    the job's current status: the original worker crashes on any non-2xx answer.
    """
    now = db.utcnow()
    with db.write_transaction():
        job = _get_locked(principal, job_id)
        # Completion means the command exited 0 (the worker protocol reports nothing else).
        done = transition(job, Action.COMPLETE, now=now, actor=principal.actor,
                          machine_id=machine_id, exit_code=0)
    return (job, False) if done is None else (done, True)


def fail(principal: Principal, job_id: str, machine_id: str, *, exit_code=None, reason=None,
         kind: str = "job") -> tuple[Job, bool]:
    """A failed attempt reported by its holder. Returns the job and whether the report changed
    it (a late or repeated report changes nothing, as in `complete`).

    kind "job" (the command failed): charged to the job, see `_charge_failure`. kind "node"
    (the machine could not run it: storage, disk, work directory): the job goes back to pending
    uncharged, and the machine is banned from it, which counts toward its reallocation.
    """
    now = db.utcnow()
    with db.write_transaction():
        job = _get_locked(principal, job_id)
        if kind == "node":
            ended = transition(job, Action.END_ATTEMPT, now=now, actor=principal.actor,
                               machine_id=machine_id, exit_code=exit_code,
                               reason=_node_reason(reason))
            if ended is not None:
                _ban(job, machine_id, now)
                ended = transition(ended, Action.REQUEUE, now=now, actor=principal.actor,
                                   machine_id=machine_id,
                                   reason="node failure, not charged to the job")
        else:
            ended = _charge_failure(job, now, actor=principal.actor, machine_id=machine_id,
                                    exit_code=exit_code, reason=reason, ban=True)
    return (job, False) if ended is None else (ended, True)


def _node_reason(reason: str | None) -> str:
    """The event's reason for a node failure, said once: our agent's reasons already start
    with "node failure:" (agent/blame.py), other clients' may not."""
    if not reason:
        return "node failure"
    return reason if reason.startswith("node failure") else f"node failure: {reason}"


def _ban(job: Job, machine_id: str, now) -> None:
    JobBan.insert(job=job.id, machine_id=machine_id, user_id=job.user_id,
                  container_group_id=job.container_group_id,
                  created=now).on_conflict_ignore().execute()


def _charge_failure(job: Job, now, *, actor: str, machine_id, exit_code=None, reason=None,
                    ban: bool) -> Job | None:
    """A failure of the job itself: count it, then retry it elsewhere or, at max_failures, fail
    it for good. `machine_id`: the holder reporting it (None: the API ends the attempt after
    the lease ran out). `ban` keeps that machine from getting it again. Returns the job as
    left, or None when the table refused (the machine does not hold the job)."""
    ended = transition(job, Action.END_ATTEMPT, now=now, actor=actor, machine_id=machine_id,
                       exit_code=exit_code, reason=reason)
    if ended is None:
        return None
    if ban:
        _ban(job, machine_id, now)
    failures = job.num_failures + 1
    if failures >= job.max_failures:
        why = f"failed {failures} of max_failures={job.max_failures} times"
        if reason == TIMED_OUT:
            why = f"{TIMED_OUT}; {why}"
        return transition(ended, Action.FAIL, now=now, actor=actor, machine_id=machine_id,
                          reason=why, notify_reason=reason or why, num_failures=failures)
    return transition(ended, Action.REQUEUE, now=now, actor=actor, machine_id=machine_id,
                      reason=f"{job.max_failures - failures} attempt(s) left",
                      num_failures=failures)


# --- Cancelling and clearing ------------------------------------------------------------------

def cancel(principal: Principal, job_id: str, reason: str = "canceled by user") -> Job:
    now = db.utcnow()
    with db.write_transaction():
        job = _get_locked(principal, job_id)
        if transition(job, Action.CANCEL, now=now, actor=principal.actor,
                      reason=reason) is None:
            # Only a final job cannot be canceled (api/states.py).
            raise Conflict(f"job {job_id} is already {job.status}", status_now=job.status)
    return Job.get_by_id(job_id)


# Purges and deletes go in batches of this many jobs, each batch its own short transaction:
# one statement over 800,000 jobs held SQLite's write lock for 22 s, and every other tenant's
# heartbeat waited behind it (or failed, "database is locked").
PURGE_BATCH = 1000


def _in_batches(step) -> int:
    """Run `step()` (one transaction, returns how many jobs it handled) until a batch comes
    back short; returns the total."""
    total = 0
    while True:
        done = step()
        total += done
        if done < PURGE_BATCH:
            return total


def purge_container_group(principal: Principal, container_group_id: str) -> int:
    """Delete the group's pending jobs and cancel its running ones; returns how many.

    Both are the PURGE step of api/states.py, through `transition_all()`: a running job is
    canceled with a "purged" event and its webhook; a pending one is deleted, with no event (its
    history goes with it). In batches (see PURGE_BATCH), so not all or nothing: a purge cut
    short has done part of the work, and repeating it does the rest.
    """
    in_group = _owned(Job.select(Job.id, Job.status, Job.machine_id), principal).where(
        Job.container_group_id == container_group_id)

    def purge(status: JobStatus) -> int:
        now = db.utcnow()
        with db.write_transaction():
            # Plain rows, not model instances: a purge handles up to a million of them.
            batch = list(db.locked(in_group.where(Job.status == status).limit(PURGE_BATCH),
                                   skip_locked=True).namedtuples())
            return transition_all(batch, Action.PURGE, now=now, actor=principal.actor,
                                  reason=f"container group {container_group_id} purged")

    return (_in_batches(lambda: purge(JobStatus.PENDING))
            + _in_batches(lambda: purge(JobStatus.RUNNING)))


def clear_all() -> int:
    """Administrator only: delete every job, in batches."""
    def delete_some() -> int:
        with db.write_transaction():
            ids = [job.id for job in Job.select(Job.id).limit(PURGE_BATCH)]
            if ids:
                Job.delete().where(Job.id.in_(ids)).execute()
            return len(ids)
    return _in_batches(delete_some)
