"""Status webhooks for users: a job's deliveries, and the secret that signs them."""

from sanic import Blueprint, Request
from sanic.response import json

from api import db, queue, users, webhooks
from api.errors import NotFound
from api.principal import Principal
from api.routes import documented
from api.scopes import TENANT, allow

bp = Blueprint("webhooks")


def _deliveries(principal: Principal, job_id: str) -> list:
    queue.get(principal, job_id)  # 404 unless the caller may see the job
    return webhooks.for_job(job_id)


@bp.get("/jobs/<job_id:uuid>/webhooks")
@documented("A job's webhook deliveries, oldest first: status, tries, last answer, next retry",
            responses={200: "WebhookDeliveryList"}, errors=(401, 403, 404))
@allow(*TENANT)
async def job_webhooks(request: Request, job_id):
    # A job id is a UUID, as on every other /jobs/<id> route: anything else is 404 before any
    # database work.
    deliveries = await db.run(_deliveries, request.ctx.principal, str(job_id))
    return json({"deliveries": [webhooks.to_dict(delivery) for delivery in deliveries]})


@bp.get("/users/me/webhook-secret")
@documented("The secret that signs your webhooks (X-Kelpie-Signature); made on first use",
            responses={200: "WebhookSecret"}, errors=(401, 403, 404))
@allow(*TENANT)
async def get_webhook_secret(request: Request):
    return await _secret_answer(request, users.webhook_secret, status=200)


@bp.post("/users/me/webhook-secret")
@documented("Replace your webhook secret; deliveries sent from now on are signed with the new one",
            responses={201: "WebhookSecret"}, errors=(401, 403, 404))
@allow(*TENANT)
async def rotate_webhook_secret(request: Request):
    return await _secret_answer(request, users.rotate_webhook_secret, status=201)


async def _secret_answer(request: Request, secret_of, *, status: int):
    """The caller's secret as `secret_of(user_id)` reads or replaces it; 404 when the user is
    gone (a credential that outlived its user, as GET /users/me answers it)."""
    secret = await db.run(secret_of, request.ctx.principal.user_id)
    if secret is None:
        raise NotFound("user not found")
    return json({"secret": secret}, status=status)
