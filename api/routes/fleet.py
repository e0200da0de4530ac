"""Read-only views of the fleet for the dashboard: machines seen lately, a day of activity."""

from sanic import Blueprint, Request
from sanic.response import json

from api import db, fleet
from api.routes import documented
from api.scopes import TENANT, allow

bp = Blueprint("fleet")


@bp.get("/fleet/machines")
@documented("Machines seen on your jobs in the last hour: group, current job, last heartbeat, "
            "bans", responses={200: "FleetMachines"}, errors=(401, 403))
@allow(*TENANT)
async def machines(request: Request):
    return json({"machines": await db.run(fleet.machines, request.ctx.principal)})


@bp.get("/fleet/activity")
@documented("How many of your jobs entered each status, hour by hour over the last 24 hours",
            responses={200: "FleetActivity"}, errors=(401, 403))
@allow(*TENANT)
async def activity(request: Request):
    return json(await db.run(fleet.activity, request.ctx.principal))
