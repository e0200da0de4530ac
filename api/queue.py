"""The job queue: the only code that changes a job's state.

Every transition of the state machine in ARCHITECTURE.md happens in a function here, inside
one transaction, and is written to the job's event log in that same transaction. Route
handlers parse and authorise; they never write a job themselves. All functions are
synchronous and run on the database thread pool (see `api.db.run`).
"""

import hashlib
import threading
import uuid
import weakref
from datetime import timedelta

from peewee import SQL, Select, fn
from psycopg2.errors import DuplicatePreparedStatement

from api import db, keys, lease, metrics, serialize, sql, wakeups, webhooks
from api.errors import Conflict, Forbidden, NotFound
from api.models import Job, JobBan, JobEvent
from api.principal import Principal

__all__ = ["Principal"]  # re-exported: routes and modules name it from here too

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELED = "canceled"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELED)
FINAL_STATUSES = (COMPLETED, FAILED, CANCELED)


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


def _event(job_id: str, kind: str, status: str, *, actor: str, machine_id=None, attempt=None,
           exit_code=None, reason=None, at=None) -> None:
    JobEvent.insert(job=job_id, at=at or db.utcnow(), kind=kind, status=status,
                    machine_id=machine_id, attempt=attempt, exit_code=exit_code,
                    reason=reason, actor=actor).execute()


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
    rows = []
    for position, spec in enumerate(specs):
        rows.append({
            **spec,
            "id": str(uuid.uuid4()),
            "user": principal.user_id,
            "organization": principal.organization,
            "project": principal.project,
            "status": PENDING,
            # One microsecond apart, so a batch is claimed in the order it was given (claims
            # take the oldest `created` first); the wire shows milliseconds, so nobody sees it.
            "created": now + timedelta(microseconds=position),
        })
    with db.write_transaction():
        db.insert_rows(Job, rows)
        db.insert_rows(JobEvent, [{"job": row["id"], "at": now, "kind": "created",
                                   "status": PENDING, "actor": principal.actor}
                                  for row in rows])
        # Long-polling workers of these groups are woken when (and only if) this commits.
        wakeups.job_claimable(row.get("container_group_id") for row in rows)
    return [Job(**row) for row in rows]


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

FAILURE_KINDS = ("job", "node")


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
                    _charge_failure(candidate, now, actor=SYSTEM_ACTOR,
                                    machine_id=candidate.machine_id, reason=TIMED_OUT, ban=False)
                    continue
                interruptions += 1
                if not _interrupt(candidate, machine_id, now):
                    continue
            job = _assign(candidate, principal, machine_id, now)
            break
    metrics.INTERRUPTIONS.inc(interruptions)  # counted once the hand-over is committed
    return job


# Connection -> names of the claim statements PREPAREd on it. Planning the claim's CTEs cost
# PostgreSQL about as much CPU as running them; a prepared statement is planned once per
# connection (and variant: with or without project, group, key, the lease grace).
_prepared: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def _execute_prepared(statement: str, params: list):
    connection = db.database.connection()
    name = "kelpie_claim_" + hashlib.sha1(statement.encode()).hexdigest()[:16]
    with _prepared_lock:
        names = _prepared.setdefault(connection, set())
    if name not in names:
        numbered, count = statement, 0
        while "%s" in numbered:
            count += 1
            numbered = numbered.replace("%s", f"${count}", 1)
        try:
            db.database.execute_sql(f"PREPARE {name} AS {numbered}")
        except DuplicatePreparedStatement:
            pass  # prepared before, but the answer was lost: it is there all the same
        names.add(name)
    placeholders = ", ".join(["%s"] * len(params))
    return db.database.execute_sql(f"EXECUTE {name} ({placeholders})", params)


def _claim_pending_pg(principal: Principal, machine_id: str, container_group_id, now):
    """(job or None, whether a stale running job must be dealt with first)."""
    cursor = _execute_prepared(*sql.claim_pending_pg(
        principal.user_id, machine_id, container_group_id, now, actor=principal.actor,
        timestamp=serialize.timestamp(now), project=principal.project,
        key_hash=principal.key_hash))
    row = cursor.fetchone()
    stale, key_ok = row[0], row[1]
    if stale:
        return None, True
    if not key_ok:
        raise Forbidden("invalid X-Kelpie-Key")
    if row[2] is None:
        return None, False
    columns = Job._meta.columns
    values = {}
    for description, value in zip(cursor.description[2:], row[2:], strict=True):
        field = columns[description.name]
        values[field.name] = field.python_value(value)
    return Job(**values), False


def _timed_out(job: Job, now) -> bool:
    """The attempt has run longer than the job allows, plus one lease for its holder to have
    noticed and reported it."""
    if job.timeout_s is None or job.started is None:
        return False
    limit = job.timeout_s + lease.seconds(job.heartbeat_interval)
    return now >= job.started + timedelta(seconds=limit)


def _interrupt(job: Job, machine_id: str, now) -> bool:
    """Count the holder's lost lease. False when that was one too many: the job is failed."""
    count = job.num_interruptions + 1
    allowed = count <= job.max_interruptions
    _event(job.id, "heartbeat_lost", RUNNING, actor=SYSTEM_ACTOR, machine_id=job.machine_id,
           attempt=job.num_attempts, at=now,
           reason=f"no heartbeat from {job.machine_id}; "
                  + (f"handed to {machine_id}; " if allowed else "")
                  + f"interruption {count} of max_interruptions={job.max_interruptions}")
    if allowed:
        Job.update(num_interruptions=count).where(Job.id == job.id).execute()
        return True
    Job.update(status=FAILED, failed=now, num_interruptions=count, lease_expires=None).where(
        Job.id == job.id).execute()
    _event(job.id, "failed", FAILED, actor=SYSTEM_ACTOR, machine_id=job.machine_id, at=now,
           reason=TOO_MANY_INTERRUPTIONS)
    webhooks.enqueue(Job.get_by_id(job.id), FAILED, now, reason=TOO_MANY_INTERRUPTIONS)
    return False


def _assign(job: Job, principal: Principal, machine_id: str, now) -> Job:
    attempt = job.num_attempts + 1
    Job.update(
        status=RUNNING, machine_id=machine_id, started=now, heartbeat=now,
        lease_expires=now + timedelta(seconds=lease.seconds(job.heartbeat_interval)),
        num_attempts=attempt,
    ).where(Job.id == job.id).execute()
    _event(job.id, "assigned", RUNNING, actor=principal.actor, machine_id=machine_id,
           attempt=attempt, at=now)
    job = Job.get_by_id(job.id)
    webhooks.enqueue(job, RUNNING, now)
    return job


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
        if not _holds(job, machine_id):
            return job, False
        Job.update(status=COMPLETED, completed=now, lease_expires=None).where(
            Job.id == job_id).execute()
        # Completion means the command exited 0 (the worker protocol reports nothing else).
        _event(job_id, "completed", COMPLETED, actor=principal.actor, machine_id=machine_id,
               attempt=job.num_attempts, exit_code=0, at=now)
        job = Job.get_by_id(job_id)
        webhooks.enqueue(job, COMPLETED, now)
    return job, True


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
        if not _holds(job, machine_id):
            return job, False
        if kind == "node":
            _ban(job, machine_id, now)
            _event(job_id, "attempt_failed", RUNNING, actor=principal.actor,
                   machine_id=machine_id, attempt=job.num_attempts, exit_code=exit_code,
                   reason=_node_reason(reason), at=now)
            _requeue(job, now, actor=principal.actor,
                     reason="node failure, not charged to the job")
        else:
            _charge_failure(job, now, actor=principal.actor, machine_id=machine_id,
                            exit_code=exit_code, reason=reason, ban=True)
    return Job.get_by_id(job_id), True


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


def _requeue(job: Job, now, *, actor: str, reason: str, **changes) -> None:
    Job.update(status=PENDING, machine_id=None, heartbeat=None, lease_expires=None,
               **changes).where(Job.id == job.id).execute()
    _event(job.id, "requeued", PENDING, actor=actor, at=now, reason=reason)
    wakeups.job_claimable([job.container_group_id])


def _charge_failure(job: Job, now, *, actor: str, machine_id, exit_code=None, reason=None,
                    ban: bool) -> None:
    """A failure of the job itself: count it, then retry it elsewhere or, at max_failures, fail
    it for good. `ban` keeps the machine that ran it from getting it again."""
    failures = job.num_failures + 1
    if ban:
        _ban(job, machine_id, now)
    _event(job.id, "attempt_failed", RUNNING, actor=actor, machine_id=machine_id,
           attempt=job.num_attempts, exit_code=exit_code, reason=reason, at=now)
    if failures >= job.max_failures:
        Job.update(status=FAILED, failed=now, num_failures=failures,
                   lease_expires=None).where(Job.id == job.id).execute()
        why = f"failed {failures} of max_failures={job.max_failures} times"
        if reason == TIMED_OUT:
            why = f"{TIMED_OUT}; {why}"
        _event(job.id, "failed", FAILED, actor=actor, machine_id=machine_id, at=now, reason=why)
        webhooks.enqueue(Job.get_by_id(job.id), FAILED, now, reason=reason or why)
    else:
        _requeue(job, now, actor=actor, num_failures=failures,
                 reason=f"{job.max_failures - failures} attempt(s) left")


# --- Cancelling and clearing ------------------------------------------------------------------

def cancel(principal: Principal, job_id: str, reason: str = "canceled by user") -> Job:
    now = db.utcnow()
    with db.write_transaction():
        job = _get_locked(principal, job_id)
        if job.status in FINAL_STATUSES:
            raise Conflict(f"job {job_id} is already {job.status}", status_now=job.status)
        Job.update(status=CANCELED, canceled=now, lease_expires=None).where(
            Job.id == job_id).execute()
        _event(job_id, "canceled", CANCELED, actor=principal.actor, machine_id=job.machine_id,
               at=now, reason=reason)
        webhooks.enqueue(job, CANCELED, now)
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

    In batches (see PURGE_BATCH), so not all or nothing: a purge cut short has done part of
    the work, and repeating it does the rest.
    """
    in_group = _owned(Job.select(Job.id, Job.machine_id), principal).where(
        Job.container_group_id == container_group_id)

    def delete_pending() -> int:
        with db.write_transaction():
            ids = [job.id for job in db.locked(
                in_group.where(Job.status == PENDING).limit(PURGE_BATCH), skip_locked=True)]
            if ids:
                Job.delete().where(Job.id.in_(ids)).execute()
            return len(ids)

    def cancel_running() -> int:
        now = db.utcnow()
        with db.write_transaction():
            running = list(db.locked(
                in_group.where(Job.status == RUNNING).limit(PURGE_BATCH), skip_locked=True))
            if not running:
                return 0
            ids = [job.id for job in running]
            Job.update(status=CANCELED, canceled=now, lease_expires=None).where(
                Job.id.in_(ids)).execute()
            JobEvent.insert_many([
                {"job": job.id, "at": now, "kind": "purged", "status": CANCELED,
                 "machine_id": job.machine_id, "actor": principal.actor,
                 "reason": f"container group {container_group_id} purged"}
                for job in running
            ]).execute()
            for job in Job.select().where(Job.id.in_(ids), Job.webhook.is_null(False)):
                webhooks.enqueue(job, CANCELED, now)
            return len(ids)

    return _in_batches(delete_pending) + _in_batches(cancel_running)


def clear_all() -> int:
    """Administrator only: delete every job, in batches."""
    def delete_some() -> int:
        with db.write_transaction():
            ids = [job.id for job in Job.select(Job.id).limit(PURGE_BATCH)]
            if ids:
                Job.delete().where(Job.id.in_(ids)).execute()
            return len(ids)
    return _in_batches(delete_some)
