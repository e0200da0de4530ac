"""Users' job routes: submit, batch submit, list, get, cancel, purge, history."""

from sanic import Blueprint, Request
from sanic.response import empty, json
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import Boolean, Integer, String

from api import db, fields, idempotency, jobspec, queue, serialize
from api.errors import ValidationError
from api.routes import documented, json_body, query_bool, query_int
from api.schemas import DEFAULTS
from api.scopes import ADMIN_ONLY, TENANT, allow

bp = Blueprint("jobs")
DEFAULT_PAGE_SIZE = 100
# Set on a GET /jobs answer whose `_count` stopped at the listing window (more jobs match).
COUNT_CAPPED_HEADER = "X-Kelpie-Count-Capped"


IDEMPOTENCY_KEY = Parameter(
    idempotency.HEADER, String(), "header",
    description=f"Up to {idempotency.MAX_LENGTH} printable ASCII characters. A retry with the "
    "same key within 24 hours (same tenant) gets the original answer, status and body, and "
    "creates nothing; the same key with a different request answers 409.")


async def _submit(request: Request, body, specs: list[dict], render):
    """Submit, once per Idempotency-Key when the request carries one."""
    key = idempotency.key_of(request.headers)
    if key is None:
        status, answer = render(await db.run(queue.submit, request.ctx.principal, specs))
        return json(answer, status=status)
    status, answer, replayed = await db.run(
        idempotency.submit_once, request.ctx.principal, key,
        idempotency.fingerprint(request.path, body), specs, render)
    return json(answer, status=status,
                headers={"Idempotent-Replayed": "true"} if replayed else None)


@bp.post("/jobs")
@documented("Submit a job", body="JobRequest", responses={202: "Job"}, errors=(400, 409, 413),
            parameters=[IDEMPOTENCY_KEY])
@allow(*TENANT)
async def submit_job(request: Request):
    body = json_body(request)
    spec = jobspec.parse_job(body, request.app.ctx.settings)
    return await _submit(request, body, [spec], lambda jobs: (202, serialize.job(jobs[0])))


@bp.post("/jobs/batch")
@documented(f"Submit up to {DEFAULTS.max_batch_size} jobs, all or nothing",
            body="JobBatchRequest", responses={202: "JobList"}, errors=(400, 409, 413),
            parameters=[IDEMPOTENCY_KEY])
@allow(*TENANT)
async def submit_batch(request: Request):
    body = json_body(request)
    limit = request.app.ctx.settings.max_batch_size
    if not isinstance(body, list) or not 1 <= len(body) <= limit:
        raise ValidationError("body", f"must be a list of 1 to {limit} jobs")
    specs = []
    for index, item in enumerate(body):
        try:
            specs.append(jobspec.parse_job(item, request.app.ctx.settings))
        except ValidationError as error:
            raise ValidationError(f"[{index}].{error.field}".rstrip("."),
                                  str(error).split(": ", 1)[-1], index=index) from None
    return await _submit(request, body, specs,
                         lambda jobs: (202, [serialize.job(job) for job in jobs]))


@bp.get("/jobs")
@documented("List jobs, newest first", responses={200: "JobList"}, errors=(400,), parameters=[
    Parameter("status", String(enum=list(queue.STATUSES)), "query"),
    Parameter("container_group_id", String(), "query"),
    Parameter("page_size", Integer(minimum=1, maximum=DEFAULTS.max_page_size,
                                   default=DEFAULT_PAGE_SIZE), "query"),
    Parameter("page", Integer(minimum=1, maximum=DEFAULTS.list_window, default=1), "query",
              description=f"page × page_size may be at most {DEFAULTS.list_window} (the "
              "listing window, KELPIE_LIST_WINDOW); a page past it answers 400 with field "
              "`page`. `_count` is exact below the window and equals it at or above it, "
              f"with the header {COUNT_CAPPED_HEADER}: true."),
    Parameter("asc", Boolean(default=False), "query"),
])
@allow(*TENANT)
async def list_jobs(request: Request):
    status = request.args.get("status") or None
    if status is not None and status not in queue.STATUSES:
        raise ValidationError("status", f"must be one of {', '.join(queue.STATUSES)}")
    settings = request.app.ctx.settings
    container_group_id = fields.text(request.args.get("container_group_id") or None,
                                     "container_group_id", required=False, max_length=255)
    page = query_int(request, "page", 1, 1, 10_000_000)
    page_size = query_int(request, "page_size", DEFAULT_PAGE_SIZE, 1, settings.max_page_size)
    refusal = queue.list_window_refusal(page, page_size, settings.list_window)
    if refusal:
        raise ValidationError("page", refusal)
    ascending = query_bool(request, "asc", False)

    def page_of_jobs():
        count, capped, jobs = queue.list_jobs(
            request.ctx.principal, status=status, container_group_id=container_group_id,
            page=page, page_size=page_size, ascending=ascending, window=settings.list_window)
        # Built on the database thread, not the event loop: a thousand jobs take the loop
        # long enough to delay every heartbeat this process is answering meanwhile.
        return count, capped, [serialize.job(job) for job in jobs]

    count, capped, jobs = await db.run(page_of_jobs)
    return json({"_count": count, "jobs": jobs},
                headers={COUNT_CAPPED_HEADER: "true"} if capped else None)


@bp.get("/jobs/<job_id:uuid>")
@documented("Get a job", responses={200: "Job"}, errors=(401, 403, 404))
@allow(*TENANT)
async def get_job(request: Request, job_id):
    job = await db.run(queue.get, request.ctx.principal, str(job_id))
    return json(serialize.job(job))


@bp.get("/jobs/<job_id:uuid>/events")
@documented("A job's history: every transition in order", responses={200: "JobEventList"},
            errors=(401, 403, 404))
@allow(*TENANT)
async def job_events(request: Request, job_id):
    events = await db.run(queue.events, request.ctx.principal, str(job_id))
    return json({"events": [serialize.event(event) for event in events]})


@bp.delete("/jobs/<job_id:uuid>")
@documented("Cancel a job that has not finished", responses={202: "Message"},
            errors=(401, 403, 404, 409))
@allow(*TENANT)
async def cancel_job(request: Request, job_id):
    await db.run(queue.cancel, request.ctx.principal, str(job_id))
    return json({"message": "Job canceled"}, status=202)


@bp.delete("/jobs/container-groups/<container_group_id:str>")
@documented("Delete a container group's pending jobs and cancel its running ones",
            responses={200: "Count"}, errors=(401, 403))
@allow(*TENANT)
async def purge_container_group(request: Request, container_group_id: str):
    fields.text(container_group_id, "container_group_id", max_length=255)
    count = await db.run(queue.purge_container_group, request.ctx.principal, container_group_id)
    return json({"count": count})  # 200, as the original answers


@bp.delete("/jobs")
@documented("Administrator: delete every job", responses={204: None}, errors=(401, 403))
@allow(*ADMIN_ONLY)
async def clear_jobs(request: Request):
    await db.run(queue.clear_all)
    return empty(status=204)
