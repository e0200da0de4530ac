"""The worker protocol: claim work, heartbeat, report completion or failure."""

import asyncio
import math
from typing import NamedTuple

from sanic import Blueprint, Request
from sanic.response import json
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import Float, String

from api import bodies, db, fields, keys, metrics, queue, reallocation, serialize, wakeups
from api.errors import Forbidden, ValidationError
from api.principal import Principal
from api.routes import documented, json_body
from api.schemas import DEFAULTS
from api.scopes import WORKER_PROTOCOL, allow

bp = Blueprint("work")


# Names and limits come from the reports' models (api/bodies.py), as the document's do.
MAX_MACHINE_ID = bodies.max_length(bodies.WorkerReport, "machine_id")
MAX_GROUP_ID = bodies.max_length(bodies.WorkerReport, "container_group_id")
COMPLETED_EXIT_CODES = bodies.choices(bodies.CompletionReport, "exit_code")
EXIT_CODES = bodies.bounds(bodies.FailureReport, "exit_code")
MAX_REASON = bodies.max_length(bodies.FailureReport, "reason")
FAILURE_KINDS = bodies.choices(bodies.FailureReport, "kind")
DEFAULT_KIND = bodies.default(bodies.FailureReport, "kind")
# GET /work's query names the machine and group as the reports do: their schemas without the
# body's null and default, which a query parameter cannot have.
IDENTITY = {name: {key: value for key, value in schema.items()
                   if key not in ("type", "nullable", "default")}
            for name, schema in bodies.openapi_schema(bodies.WorkerReport)["properties"].items()}


def worker_identity(principal: Principal, machine_id, container_group_id) -> tuple[str, str | None]:
    """Validate the machine and container group a worker speaks for.

    A caller authenticated by a worker token may only speak for the machine and container
    group the token names; a worker key only for the container groups it was issued for.
    """
    machine_id = fields.text(machine_id, "machine_id", max_length=MAX_MACHINE_ID)
    container_group_id = fields.text(container_group_id, "container_group_id", required=False,
                                     max_length=MAX_GROUP_ID) or None
    if principal.machine_id is not None and principal.machine_id != machine_id:
        raise Forbidden("machine_id does not match the worker token")
    groups = principal.container_group_ids
    if groups is not None and container_group_id not in groups:
        raise Forbidden("container_group_id is not one this worker credential is bound to",
                        field="container_group_id")
    return machine_id, container_group_id


def _read_report(body, model: type[bodies.WorkerReport], principal: Principal) -> tuple[dict, str]:
    """A report's body (absent: empty) and the machine it speaks for, checked against the
    caller's credential before the report's own fields are."""
    body = bodies.object_of(body, model, absent_is_empty=True)
    machine_id, _ = worker_identity(principal, body.get("machine_id"),
                                    body.get("container_group_id"))
    return body, machine_id


def parse_heartbeat(body, principal: Principal) -> str:
    """The machine a heartbeat speaks for."""
    return _read_report(body, bodies.WorkerReport, principal)[1]


def parse_completion(body, principal: Principal) -> str:
    """The machine a completion report speaks for."""
    body, machine_id = _read_report(body, bodies.CompletionReport, principal)
    # A worker reports completion only after its command exited 0 (the original sends no
    # exit_code at all); one that says otherwise is contradicting itself.
    exit_code = body.get("exit_code")
    if exit_code is not None and (isinstance(exit_code, bool)
                                  or exit_code not in COMPLETED_EXIT_CODES):
        raise ValidationError("exit_code", f"must be {COMPLETED_EXIT_CODES[0]} for a completed "
                              "job (report a failure with POST /jobs/:id/failed)")
    return machine_id


class Failure(NamedTuple):
    machine_id: str
    exit_code: int | None
    reason: str | None
    kind: str


def parse_failure(body, principal: Principal) -> Failure:
    """A failure report's fields as `queue.fail` takes them: the kind defaulted, the reason cut
    to what is kept."""
    body, machine_id = _read_report(body, bodies.FailureReport, principal)
    exit_code = body.get("exit_code")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                  or not EXIT_CODES[0] <= exit_code <= EXIT_CODES[1]):
        raise ValidationError("exit_code", "must be an integer")
    reason = fields.text(body.get("reason"), "reason", required=False, max_length=MAX_REASON)
    kind = body.get("kind")
    if kind is None:
        kind = DEFAULT_KIND
    if kind not in FAILURE_KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(FAILURE_KINDS)}")
    return Failure(machine_id, exit_code, (reason or None) and reason[:bodies.REASON_KEPT_LENGTH],
                   kind)


def _wait_seconds(request: Request) -> float:
    """`wait` in seconds: absent = 0 (a plain poll, as the original worker sends); larger than
    KELPIE_MAX_POLL_WAIT_S is served as that."""
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise ValidationError("wait", "must be a number of seconds") from None
    if not math.isfinite(wait) or wait < 0:
        raise ValidationError("wait", "must be a number of seconds, 0 or more")
    return min(wait, request.app.ctx.settings.max_poll_wait_s)


def _cache_entry(request: Request, machine_id: str, key: str) -> tuple:
    """Whose "nothing to claim" the empty cache remembers: bans are per machine, and what a
    caller may claim depends on its tenant and project."""
    principal = request.ctx.principal
    return (principal.user_id, principal.project, key, machine_id)


async def _claim(request: Request, machine_id: str, container_group_id, key: str):
    """One claim for the caller, or the empty cache's answer when this process knows the
    group has had nothing for this caller since its last wake-up."""
    principal = request.ctx.principal
    entry = _cache_entry(request, machine_id, key)
    hub = wakeups.hub
    if hub.known_empty(entry, key):
        # No statement runs here to prove the key still exists: it is re-read when it was
        # last seen valid more than KELPIE_KEY_RECHECK_S ago, so a revoked key is refused
        # within that bound. Reading it on every poll (one thread-pool hop and one database
        # round trip) was most of what an empty poll cost.
        key_hash = principal.key_hash
        if key_hash is not None and not keys.valid_within(
                key_hash, request.app.ctx.settings.key_recheck_seconds):
            if not await db.run_protocol(keys.is_valid, key_hash):
                request.app.ctx.key_cache.drop(key_hash)
                raise Forbidden("invalid X-Kelpie-Key")
            keys.seen_valid(key_hash)
        metrics.EMPTY_CACHE_HITS.inc()
        return None
    generation = hub.generation(key)
    job = await db.run_protocol(queue.claim, principal, machine_id, container_group_id)
    if principal.key_hash is not None:
        # The claim statement refuses a key that is gone (403): it was valid just now.
        keys.seen_valid(principal.key_hash)
    if job is None:
        hub.remember_empty(entry, generation)
    else:
        hub.forget_empty(entry)
        metrics.CLAIMS.inc()
    return job


@bp.get("/work")
@documented("Claim the next job for this machine ([] when there is none). With `wait`, the "
            "request is held until a job for the caller's container group can be claimed or "
            "the wait ends (then []).",
            responses={200: "WorkList"}, parameters=[
                # The same limits as the reports' fields of the same names.
                Parameter("machine_id", String(**IDENTITY["machine_id"]), "query",
                          required=True),
                Parameter("container_group_id", String(**IDENTITY["container_group_id"]),
                          "query"),
                Parameter("wait", Float(minimum=0, maximum=DEFAULTS.max_poll_wait_s, default=0),
                          "query", description="Seconds to hold the request while there is no "
                          "job (long poll). Larger values are served as the server's limit, "
                          "KELPIE_MAX_POLL_WAIT_S (default 30)."),
            ])
@allow(*WORKER_PROTOCOL, key_checked_by_statement=True)
async def get_work(request: Request):
    machine_id, container_group_id = worker_identity(
        request.ctx.principal, request.args.get("machine_id"),
        request.args.get("container_group_id"))
    wait = _wait_seconds(request)
    # A machine banned from too many jobs gets no more: it is being moved elsewhere.
    if await reallocation.on_work_request(request.app, request.ctx.principal, machine_id,
                                          container_group_id):
        return json([])
    key = wakeups.group_key(container_group_id)
    hub = wakeups.hub
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    woken = False
    while True:
        generation = hub.generation(key)
        job = await _claim(request, machine_id, container_group_id, key)
        if job is not None:
            if woken:
                # Woken for a job and got one: there may be more (a batch), pass it on.
                hub.wake(key)
            return json([serialize.job(job)])
        remaining = deadline - loop.time()
        if remaining <= 0 or hub.closing:
            return json([])
        if hub.generation(key) != generation:
            continue  # woken while claiming: look again at once
        ticket, future = hub.park(key)
        try:
            await asyncio.wait_for(future, remaining)
        except TimeoutError:
            hub.still_empty(_cache_entry(request, machine_id, key), key, generation)
            return json([])
        finally:
            # Woken, timed out, or cancelled because the client went away: never left behind.
            hub.unpark(key, ticket)
        if hub.closing or request.conn_info is None or request.conn_info.lost:
            return json([])  # nobody to hand a job to: leave it for a live waiter
        woken = True


@bp.post("/jobs/<job_id:uuid>/heartbeat")
@documented("Heartbeat; answers the status the worker should act on",
            body="WorkerReport", responses={200: "HeartbeatResponse"},
            errors=(400, 401, 403, 404))
@allow(*WORKER_PROTOCOL, key_checked_by_statement=True)
async def heartbeat(request: Request, job_id):
    machine_id = parse_heartbeat(json_body(request), request.ctx.principal)
    status = await db.run_protocol(queue.heartbeat, request.ctx.principal, str(job_id), machine_id)
    if status == queue.RUNNING:
        metrics.HEARTBEATS.inc()
    return json({"status": status})


@bp.post("/jobs/<job_id:uuid>/completed")
@documented("Report that the job finished and its outputs are uploaded. A late or repeated "
            "report (the caller no longer holds the job) changes nothing and is answered 200 "
            "with the job's current status.",
            body="CompletionReport", responses={200: "ReportAnswer"},
            errors=(400, 401, 403, 404))
@allow(*WORKER_PROTOCOL)
async def completed(request: Request, job_id):
    machine_id = parse_completion(json_body(request), request.ctx.principal)
    job, recorded = await db.run_protocol(queue.complete, request.ctx.principal, str(job_id), machine_id)
    return json(_answer(job, recorded, "Job completed"))


@bp.post("/jobs/<job_id:uuid>/failed")
@documented("Report a failed attempt: kind job (non-zero exit, timeout, failed upload; "
            "counts toward max_failures) or node (the machine could not run it; the job goes "
            "back to pending uncharged and the machine is banned from it). A late or repeated "
            "report changes nothing and is answered 202 with the job's current status.",
            body="FailureReport", responses={202: "ReportAnswer"}, errors=(400, 401, 403, 404))
@allow(*WORKER_PROTOCOL)
async def failed(request: Request, job_id):
    report = parse_failure(json_body(request), request.ctx.principal)
    machine_id = report.machine_id
    job, recorded = await db.run_protocol(queue.fail, request.ctx.principal, str(job_id), machine_id,
                                          exit_code=report.exit_code, reason=report.reason,
                                          kind=report.kind)
    if recorded:
        (metrics.NODE_FAILURES if report.kind == "node" else metrics.FAILURES).inc()
        reallocation.banned(request.ctx.principal, machine_id, job.container_group_id)
    return json(_answer(job, recorded, "Job failure recorded"), status=202)


def _answer(job, recorded: bool, message: str) -> dict:
    """The answer to a report: the original's message, plus the job's status now and whether
    this report changed anything (false: late or repeated, nothing done)."""
    if not recorded:
        message = (f"nothing changed: job {job.id} is {job.status}"
                   + (f" on {job.machine_id}" if job.status == queue.RUNNING else ""))
    return {"message": message, "status": job.status, "recorded": recorded}
