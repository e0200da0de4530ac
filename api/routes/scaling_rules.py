"""Scaling rules: how the autoscaler (api/autoscale.py) sizes a user's container groups."""

from peewee import IntegrityError
from sanic import Blueprint, Request
from sanic.response import empty, json

from api import bodies, db, salad, users
from api.errors import ApiError, Conflict, Forbidden, NotFound, Unavailable, ValidationError
from api.models import ScalingRule
from api.principal import Principal
from api.routes import documented, json_body
from api.scopes import ADMIN_ONLY, TENANT, allow
from api.serialize import timestamp

bp = Blueprint("scaling_rules")



def to_dict(rule: ScalingRule) -> dict:
    last = None
    if rule.last_evaluated is not None:
        last = {
            "at": timestamp(rule.last_evaluated),
            "count": rule.last_count,
            "target": rule.last_target,
            "group_status": rule.last_group_status,
            "group_replicas": rule.last_group_replicas,
            "action": rule.last_action,
            "error": rule.last_error,
        }
    return {
        "container_group_id": rule.container_group_id,
        "user_id": rule.user_id,
        "organization_name": rule.organization_name,
        "org_name": rule.organization_name,  # the original's name for it
        "project_name": rule.project_name,
        "container_group_name": rule.container_group_name,
        "min_replicas": rule.min_replicas,
        "max_replicas": rule.max_replicas,
        "idle_threshold_seconds": rule.idle_threshold_seconds,
        "created": timestamp(rule.created),
        "updated": timestamp(rule.updated),
        "last_evaluation": last,
    }


# Field names and bounds come from the bodies' models (api/bodies.py), as the document's do.
LIMITS = {name: bodies.bounds(bodies.ScalingRuleCreate, name) for name in bodies.RULE_LIMITS}
MAX_ID_LENGTH = bodies.max_length(bodies.ScalingRuleCreate, "container_group_id")


def _limits(body: dict, required: bool) -> dict:
    values = {}
    for name, (low, high) in LIMITS.items():
        if name not in body:
            if required:
                raise ValidationError(name, "is required")
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValidationError(name, f"must be an integer from {low} to {high}")
        values[name] = value
    return values


# The original's clients name the rule's Salad location in the body; Kelpie takes it from the
# credential, so a body may repeat it but never point elsewhere. Field -> index in (org, project).
LOCATION_FIELDS = {"org_name": 0, "organization_name": 0, "project_name": 1}
assert set(LOCATION_FIELDS) | {"container_group_id", *LIMITS} == bodies.known_fields(
    bodies.ScalingRuleCreate)


def _check_named_location(body: dict, org: str, project: str) -> None:
    for name, index in LOCATION_FIELDS.items():
        if name in body and body[name] != (org, project)[index]:
            raise Forbidden(f"{name} {body[name]!r} is not the Salad location of this "
                            f"credential ({org}/{project})", field=name)


def parse_create(body) -> tuple[dict, str, dict]:
    """A create body (ScalingRuleCreate): the body, its container group id and its limits. The
    Salad location it may name is checked later, against the credential's."""
    body = bodies.object_of(body, bodies.ScalingRuleCreate)
    container_group_id = body.get("container_group_id")
    if (not isinstance(container_group_id, str) or not container_group_id.strip()
            or len(container_group_id) > MAX_ID_LENGTH):
        raise ValidationError("container_group_id", "is required (a non-empty string)")
    limits = _limits(body, required=True)
    _check_order(limits["min_replicas"], limits["max_replicas"])
    return body, container_group_id, limits


def parse_update(body, container_group_id: str) -> dict:
    """An update body (ScalingRuleUpdate): the limits it changes."""
    body = bodies.object_of(body, bodies.ScalingRuleUpdate)
    # The original's clients send the whole rule back: its own id is fine, another is not.
    if "container_group_id" in body and body["container_group_id"] != container_group_id:
        raise ValidationError("container_group_id", "cannot be changed")
    return _limits(body, required=False)


def _check_order(min_replicas: int, max_replicas: int) -> None:
    if min_replicas > max_replicas:
        raise ValidationError("min_replicas", "must not be greater than max_replicas")


def _owned(query, principal: Principal):
    """The rules a caller may see: its tenant's, and for a Salad principal its project's."""
    if principal.is_admin:
        return query
    query = query.where(ScalingRule.user == principal.user_id)
    if principal.project is not None:
        query = query.where(ScalingRule.organization_name == principal.organization,
                            ScalingRule.project_name == principal.project)
    return query


def _get(principal: Principal, container_group_id: str) -> ScalingRule:
    rule = _owned(ScalingRule.select(), principal).where(
        ScalingRule.container_group_id == container_group_id).first()
    if rule is None:
        raise NotFound(f"no scaling rule for container group {container_group_id}")
    return rule


def _salad_location(principal: Principal, named_project: str | None) -> tuple[str, str]:
    """The Salad organization and project the caller's container groups live in: the ones its
    Salad credential was checked for, else the ones on its Kelpie account. A `Salad-Project`
    header naming any other project is refused, never followed."""
    if principal.project is not None:
        org, project = principal.organization, principal.project
    else:
        user = users.get(principal.user_id)
        org, project = (user.org, user.project) if user else (None, None)
        if named_project is not None and project is not None and named_project != project:
            raise Forbidden(f"Salad-Project {named_project!r} is not this key's project "
                            f"{project!r}", field="Salad-Project")
        project = project or named_project
    if not org or not project:
        raise ValidationError(
            "container_group_id",
            "your account has no Salad organization and project to look the container group "
            "up in: ask the administrator to set org and project on your user",
        )
    return org, project


async def _lookup_group(org: str, project: str, container_group_id: str) -> dict:
    try:
        group = await salad.call(salad.find_container_group, org, project, container_group_id)
    except salad.SaladNotConfigured:
        raise Unavailable("autoscaling is not configured on this server "
                          "(KELPIE_SALAD_API_KEY)") from None
    except salad.SaladNotFound:
        group = None
    except salad.SaladError as error:
        if error.status in (401, 403):
            raise ValidationError(
                "container_group_id",
                f"Kelpie cannot see Salad organization {org} project {project}: add the kelpie "
                "user to your organization") from None
        raise ApiError(f"Salad's API did not answer: {error}", status=503) from None
    if group is None:
        raise ValidationError("container_group_id",
                              f"no container group {container_group_id} in Salad organization "
                              f"{org} project {project}")
    return group


def _insert(rule: dict) -> ScalingRule:
    now = db.utcnow()
    try:
        with db.write_transaction():
            ScalingRule.insert(**rule, created=now, updated=now).execute()
    except IntegrityError:
        raise Conflict(f"container group {rule['container_group_id']} already has a scaling "
                       "rule") from None
    return ScalingRule.get_by_id(rule["container_group_id"])


def _update(principal: Principal, container_group_id: str, changes: dict) -> ScalingRule:
    with db.write_transaction():
        rule = _get(principal, container_group_id)
        _check_order(changes.get("min_replicas", rule.min_replicas),
                     changes.get("max_replicas", rule.max_replicas))
        if changes:
            ScalingRule.update(**changes, updated=db.utcnow()).where(
                ScalingRule.container_group_id == container_group_id).execute()
    return ScalingRule.get_by_id(container_group_id)


def _delete(principal: Principal, container_group_id: str) -> None:
    rule = _get(principal, container_group_id)
    ScalingRule.delete().where(ScalingRule.container_group_id == rule.container_group_id).execute()


@bp.post("/scaling-rules")
@documented("Create a scaling rule for one of your Salad container groups",
            body="ScalingRuleCreate", responses={201: "ScalingRule"},
            errors=(400, 401, 403, 409))
@allow(*TENANT)
async def create_rule(request: Request):
    body, container_group_id, limits = parse_create(json_body(request))
    principal = request.ctx.principal
    org, project = await db.run(_salad_location, principal,
                                 request.headers.get("salad-project"))
    _check_named_location(body, org, project)
    group = await _lookup_group(org, project, container_group_id)
    rule = await db.run(_insert, {
        "container_group_id": container_group_id, "user": principal.user_id,
        "organization_name": org, "project_name": project,
        "container_group_name": group["name"], **limits,
    })
    return json(to_dict(rule), status=201)


@bp.get("/scaling-rules")
@documented("Your scaling rules", responses={200: "ScalingRuleList"}, errors=(401, 403))
@allow(*TENANT)
async def list_rules(request: Request):
    query = _owned(ScalingRule.select(), request.ctx.principal).order_by(ScalingRule.created)
    rules = await db.run(lambda: list(query))
    return json({"_count": len(rules), "rules": [to_dict(rule) for rule in rules]})


@bp.get("/scaling-rules/<container_group_id:str>")
@documented("A scaling rule and its last evaluation", responses={200: "ScalingRule"},
            errors=(401, 403, 404))
@allow(*TENANT)
async def get_rule(request: Request, container_group_id: str):
    rule = await db.run(_get, request.ctx.principal, container_group_id)
    return json(to_dict(rule))


@bp.patch("/scaling-rules/<container_group_id:str>")
@documented("Change some of a scaling rule's limits", body="ScalingRuleUpdate",
            responses={200: "ScalingRule"}, errors=(400, 401, 403, 404))
@allow(*TENANT)
async def update_rule(request: Request, container_group_id: str):
    changes = parse_update(json_body(request), container_group_id)
    rule = await db.run(_update, request.ctx.principal, container_group_id, changes)
    return json(to_dict(rule))


@bp.delete("/scaling-rules/<container_group_id:str>")
@documented("Delete a scaling rule (the container group is left as it is)",
            responses={204: None}, errors=(401, 403, 404))
@allow(*TENANT)
async def delete_rule(request: Request, container_group_id: str):
    await db.run(_delete, request.ctx.principal, container_group_id)
    return empty(status=204)


@bp.delete("/scaling-rules")
@documented("Administrator: delete every scaling rule", responses={204: None},
            errors=(401, 403))
@allow(*ADMIN_ONLY)
async def delete_all_rules(request: Request):
    await db.run(lambda: ScalingRule.delete().execute())
    return empty(status=204)
