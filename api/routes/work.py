"""The worker protocol: claim work, heartbeat, report completion or failure."""

from sanic import Blueprint, Request
from sanic.response import json
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import String

from api import db, fields, metrics, queue, reallocation, serialize
from api.errors import Forbidden, ValidationError
from api.routes import documented, json_body
from api.scopes import WORKER_PROTOCOL, allow

bp = Blueprint("work")


def _worker_identity(request: Request, machine_id, container_group_id) -> tuple[str, str | None]:
    """Validate the machine and container group a worker speaks for.

    A caller authenticated by a worker token may only speak for the machine and container
    group the token names; a worker key only for the container groups it was issued for.
    """
    machine_id = fields.text(machine_id, "machine_id", max_length=255)
    container_group_id = fields.text(container_group_id, "container_group_id", required=False,
                                     max_length=255) or None
    principal = request.ctx.principal
    if principal.machine_id is not None and principal.machine_id != machine_id:
        raise Forbidden("machine_id does not match the worker token")
    groups = principal.container_group_ids
    if groups is not None and container_group_id not in groups:
        raise Forbidden("container_group_id is not one this worker credential is bound to",
                        field="container_group_id")
    return machine_id, container_group_id


def _report(request: Request) -> dict:
    body = json_body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


@bp.get("/work")
@documented("Claim the next job for this machine ([] when there is none)",
            responses={200: "WorkList"}, parameters=[
                Parameter("machine_id", String(), "query", required=True),
                Parameter("container_group_id", String(), "query"),
            ])
@allow(*WORKER_PROTOCOL, key_checked_by_statement=True)
async def get_work(request: Request):
    machine_id, container_group_id = _worker_identity(
        request, request.args.get("machine_id"), request.args.get("container_group_id"))
    # A machine banned from too many jobs gets no more: it is being moved elsewhere.
    if await reallocation.on_work_request(request.app, request.ctx.principal, machine_id,
                                          container_group_id):
        return json([])
    job = await db.run_protocol(queue.claim, request.ctx.principal, machine_id, container_group_id)
    if job is not None:
        metrics.CLAIMS.inc()
    return json([] if job is None else [serialize.job(job)])


@bp.post("/jobs/<job_id:uuid>/heartbeat")
@documented("Heartbeat; answers the status the worker should act on",
            body="WorkerReport", responses={200: "HeartbeatResponse"},
            errors=(400, 401, 403, 404))
@allow(*WORKER_PROTOCOL, key_checked_by_statement=True)
async def heartbeat(request: Request, job_id):
    body = _report(request)
    machine_id, _ = _worker_identity(request, body.get("machine_id"),
                                     body.get("container_group_id"))
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
    body = _report(request)
    machine_id, _ = _worker_identity(request, body.get("machine_id"),
                                     body.get("container_group_id"))
    # A worker reports completion only after its command exited 0 (the original sends no
    # exit_code at all); one that says otherwise is contradicting itself.
    exit_code = body.get("exit_code")
    if exit_code is not None and (exit_code != 0 or isinstance(exit_code, bool)):
        raise ValidationError("exit_code", "must be 0 for a completed job (report a failure "
                              "with POST /jobs/:id/failed)")
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
    body = _report(request)
    machine_id, _ = _worker_identity(request, body.get("machine_id"),
                                     body.get("container_group_id"))
    exit_code = body.get("exit_code")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                  or not -(2**31) <= exit_code < 2**31):
        raise ValidationError("exit_code", "must be an integer")
    reason = body.get("reason")
    reason = fields.text(reason, "reason", required=False, max_length=100_000)
    kind = body.get("kind")
    if kind is None:
        kind = "job"
    if kind not in queue.FAILURE_KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(queue.FAILURE_KINDS)}")
    job, recorded = await db.run_protocol(queue.fail, request.ctx.principal, str(job_id), machine_id,
                                 exit_code=exit_code, reason=(reason or None) and reason[:2000],
                                 kind=kind)
    if recorded:
        (metrics.NODE_FAILURES if kind == "node" else metrics.FAILURES).inc()
    return json(_answer(job, recorded, "Job failure recorded"), status=202)


def _answer(job, recorded: bool, message: str) -> dict:
    """The answer to a report: the original's message, plus the job's status now and whether
    this report changed anything (false: late or repeated, nothing done)."""
    if not recorded:
        message = (f"nothing changed: job {job.id} is {job.status}"
                   + (f" on {job.machine_id}" if job.status == queue.RUNNING else ""))
    return {"message": message, "status": job.status, "recorded": recorded}
