"""Machines that keep failing jobs are moved elsewhere, once, through Salad's public API.

When a machine that is banned from `max_failures_per_worker` different jobs of one tenant's
container group asks that tenant for work in that group, it is answered `[]` and its
container-group instance is reallocated to another machine (Salad's "reallocate instance"
call), as the original service does. The `machine_reallocations` row (keyed by tenant,
container group and machine) is written before Salad is asked, so this happens once however
many API processes see it; the call itself runs in the background so the worker's poll does
not wait for Salad.

Everything stays inside the calling tenant: only its own bans count, only its own scaling rule
(or its own account's Salad location) says where the group lives, so no tenant can make Kelpie
reallocate a machine in another tenant's group, or spend another tenant's one reallocation.
"""

import logging
import time

from peewee import IntegrityError

from api import db, keys, salad
from api.models import JobBan, MachineReallocation, ScalingRule, User
from api.principal import Principal

log = logging.getLogger("kelpie.reallocation")

REQUESTED = "requested"
REALLOCATED = "reallocated"
FAILED = "failed"


def _record(principal: Principal, machine_id: str, container_group_id: str):
    return (MachineReallocation.user_id == principal.user_id,
            MachineReallocation.container_group_id == container_group_id,
            MachineReallocation.machine_id == machine_id)


def claim(principal: Principal, machine_id: str, container_group_id: str, threshold: int) -> bool:
    """True (and recorded) when this machine is due for its one reallocation."""
    bans = JobBan.select().where(JobBan.machine_id == machine_id,
                                 JobBan.user_id == principal.user_id,
                                 JobBan.container_group_id == container_group_id).count()
    if bans < threshold or MachineReallocation.get_or_none(
            *_record(principal, machine_id, container_group_id)) is not None:
        return False
    if principal.key_hash is not None and not keys.is_valid(principal.key_hash):
        return False  # a cached principal whose key is gone: the claim that follows says 403
    try:
        with db.write_transaction():
            MachineReallocation.insert(
                machine_id=machine_id, user_id=principal.user_id,
                container_group_id=container_group_id, requested=db.utcnow(), outcome=REQUESTED,
            ).execute()
    except IntegrityError:
        return False  # already reallocated (or being reallocated) by this or another process
    return True


def _locate(principal: Principal, container_group_id: str) -> tuple[str, str, str] | None:
    """(organization, project, name) of the group: from the tenant's own scaling rule for it,
    else the Salad location the caller's credential or account names."""
    rule = ScalingRule.get_or_none(ScalingRule.container_group_id == container_group_id,
                                   ScalingRule.user == principal.user_id)
    if rule is not None:
        return rule.organization_name, rule.project_name, rule.container_group_name
    if principal.organization and principal.project:
        return principal.organization, principal.project, None
    user = User.get_or_none(User.id == principal.user_id)
    if user is None or not user.org or not user.project:
        return None
    return user.org, user.project, None


def _finish(principal: Principal, machine_id: str, container_group_id: str, outcome: str,
            error: str | None = None) -> None:
    MachineReallocation.update(outcome=outcome, error=error, finished=db.utcnow()).where(
        *_record(principal, machine_id, container_group_id)).execute()


async def reallocate(principal: Principal, machine_id: str, container_group_id: str) -> None:
    """Ask Salad to move the instance; the outcome is kept on the machine's record."""
    try:
        where = await db.run(_locate, principal, container_group_id)
        if where is None:
            raise salad.SaladError("no Salad organization and project known for the container "
                                   "group (no scaling rule, and the user has no org/project)")
        org, project, name = where
        if name is None:
            group = await salad.call(salad.find_container_group, org, project, container_group_id)
            if group is None:
                raise salad.SaladNotFound(f"container group {container_group_id} not found in "
                                          f"{org}/{project}")
            name = group["name"]
        await salad.call(salad.reallocate_instance, org, project, name, machine_id)
    except salad.SaladError as error:
        log.warning("reallocating machine %s failed: %s", machine_id, error)
        await db.run(_finish, principal, machine_id, container_group_id, FAILED,
                     str(error)[:2000])
        return
    log.info("machine %s of container group %s reallocated", machine_id, container_group_id)
    await db.run(_finish, principal, machine_id, container_group_id, REALLOCATED)


# Machines found not due for reallocation, remembered for a while: every poll of every idle
# machine asked the database (two reads) although bans only change when a job fails. A machine
# that reaches the threshold is reallocated at most this much later.
NOT_DUE_TTL_S = 30.0
NOT_DUE_MAX = 100_000
_not_due: dict[tuple, float] = {}


def banned(principal: Principal, machine_id: str, container_group_id: str | None) -> None:
    """This process just banned the machine from a job: its next poll asks the database."""
    _not_due.pop((principal.user_id, container_group_id, machine_id), None)


async def on_work_request(app, principal: Principal, machine_id: str,
                          container_group_id: str | None) -> bool:
    """Called by GET /work: True when this machine is being reallocated (answer it `[]`)."""
    if container_group_id is None or not salad.is_configured():
        return False
    entry = (principal.user_id, container_group_id, machine_id)
    now = time.monotonic()
    if _not_due.get(entry, 0.0) > now:
        return False
    threshold = app.ctx.settings.max_failures_per_worker
    if not await db.run(claim, principal, machine_id, container_group_id, threshold):
        if len(_not_due) >= NOT_DUE_MAX:
            _not_due.clear()
        _not_due[entry] = now + NOT_DUE_TTL_S
        return False
    app.add_task(reallocate(principal, machine_id, container_group_id))
    return True
