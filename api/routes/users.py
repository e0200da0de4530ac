"""Users and API keys (administrator), `GET /users/me`, and each user's own keys."""

from datetime import timedelta

from sanic import Blueprint, Request
from sanic.response import empty, json

from api import bodies, db, fields, keys, users
from api.errors import NotFound, ValidationError
from api.principal import WORKER
from api.routes import documented, json_body
from api.scopes import ADMIN_ONLY, TENANT, allow

bp = Blueprint("users")

# Field names and limits come from the bodies' models (api/bodies.py), as the document's do.
MAX_NAME_LENGTH = bodies.max_length(bodies.UserCreate, "name")
KEY_LIFETIME_S = bodies.bounds(bodies.TokenCreate, "expires_in_s")
WORKER_KEY_GROUPS = (bodies.min_length(bodies.TokenCreate, "container_group_ids"),
                     bodies.max_length(bodies.TokenCreate, "container_group_ids"))
SCOPES = bodies.choices(bodies.TokenCreate, "scope")
DEFAULT_SCOPE = bodies.default(bodies.TokenCreate, "scope")
assert set(SCOPES) == set(keys.ISSUABLE_SCOPES)


def _optional_string(body: dict, name: str) -> str | None:
    return fields.text(body.get(name), name, required=False, max_length=MAX_NAME_LENGTH) or None


def parse_user(body) -> tuple[str, str | None, str | None]:
    """A create-user body (UserCreate): name, org and project."""
    body = bodies.object_of(body, bodies.UserCreate, absent_is_empty=True)
    if body.get("name") is None and body.get("username") is not None:
        body = {**body, "name": body["username"]}  # the original's field name
    name = fields.text(body.get("name"), "name", max_length=MAX_NAME_LENGTH)
    return name, _optional_string(body, "org"), _optional_string(body, "project")


@bp.post("/users")
@documented("Administrator: create a user and its first API key", body="UserCreate",
            responses={201: "UserWithToken"})
@allow(*ADMIN_ONLY)
async def create_user(request: Request):
    name, org, project = parse_user(json_body(request))
    user, key = await db.run(users.create, name, org, project)
    return json({**users.to_dict(user), "username": user.name, "token": key}, status=201)


def key_options(body) -> dict:
    """A new key's options from a TokenCreate body."""
    body = bodies.object_of(body, bodies.TokenCreate, absent_is_empty=True)
    scope = body.get("scope", DEFAULT_SCOPE)
    if scope not in SCOPES:
        raise ValidationError("scope", f"must be one of {', '.join(SCOPES)}")
    groups = body.get("container_group_ids")
    fewest, most = WORKER_KEY_GROUPS
    if scope == WORKER:
        if (not isinstance(groups, list) or not fewest <= len(groups) <= most
                or len(set(map(str, groups))) != len(groups)):
            raise ValidationError("container_group_ids",
                                  f"a worker key needs a list of {fewest} to {most} distinct "
                                  "container group ids")
        groups = [fields.text(g, "container_group_ids", max_length=bodies.MAX_ID_LENGTH)
                  for g in groups]
    elif groups is not None:
        raise ValidationError("container_group_ids", "only worker keys are bound to groups")
    expires = None
    if body.get("expires_in_s") is not None and body.get("expires_at") is not None:
        raise ValidationError("expires_in_s", "give expires_in_s or expires_at, not both")
    if body.get("expires_in_s") is not None:
        seconds = body["expires_in_s"]
        low, high = KEY_LIFETIME_S
        if isinstance(seconds, bool) or not isinstance(seconds, int) \
                or not low <= seconds <= high:
            raise ValidationError("expires_in_s", f"must be an integer from {low} to {high}")
        expires = db.utcnow() + timedelta(seconds=seconds)
    elif body.get("expires_at") is not None:
        expires = fields.timestamp(body["expires_at"], "expires_at")
        if expires <= db.utcnow():
            raise ValidationError("expires_at", "must be in the future")
    return {"name": _optional_string(body, "name"), "scope": scope,
            "container_group_ids": groups, "expires": expires}


@bp.post("/users/<user_id:str>/token")
@documented("Administrator: issue another API key for a user (optionally named, scoped, "
            "bound to container groups, expiring)", body="TokenCreate", responses={201: "Token"},
            errors=(400, 401, 403, 404))
@allow(*ADMIN_ONLY)
async def issue_token(request: Request, user_id: str):
    # org_name / project_name: the original's body; its create-user-and-token script sends
    # them. Kelpie keeps a user's Salad location on the user, so they are accepted and unused.
    body = bodies.object_of(json_body(request), bodies.TokenCreate, absent_is_empty=True)
    if not fields.is_storable(user_id):
        raise NotFound(f"user {user_id!r} not found")
    row, secret = await db.run(keys.issue, user_id, **key_options(body))
    return json({"token": secret, **keys.to_dict(row)}, status=201)


async def _list_keys(user_id: str):
    if await db.run(users.get, user_id) is None:
        raise NotFound(f"user {user_id!r} not found")
    rows = await db.run(keys.for_user, user_id)
    return json({"_count": len(rows), "tokens": [keys.to_dict(row) for row in rows]})


@bp.get("/users/me/tokens")
@documented("Your API keys (never their secrets)", responses={200: "TokenList"},
            errors=(401, 403))
@allow(*TENANT)
async def my_tokens(request: Request):
    return await _list_keys(request.ctx.principal.user_id)


@bp.delete("/users/me/tokens/<key_id:str>")
@documented("Revoke one of your API keys, at once in every API process", responses={204: None},
            errors=(401, 403, 404))
@allow(*TENANT)
async def revoke_my_token(request: Request, key_id: str):
    await db.run(keys.revoke, request.ctx.principal.user_id, key_id)
    return empty(status=204)


@bp.get("/users/<user_id:str>/tokens")
@documented("Administrator: a user's API keys", responses={200: "TokenList"},
            errors=(401, 403, 404))
@allow(*ADMIN_ONLY)
async def user_tokens(request: Request, user_id: str):
    return await _list_keys(user_id)


@bp.delete("/users/<user_id:str>/tokens/<key_id:str>")
@documented("Administrator: revoke a user's API key", responses={204: None},
            errors=(401, 403, 404))
@allow(*ADMIN_ONLY)
async def revoke_user_token(request: Request, user_id: str, key_id: str):
    await db.run(keys.revoke, user_id, key_id)
    return empty(status=204)


@bp.delete("/users")
@documented("Administrator: delete every user except the administrator (and their jobs)",
            responses={204: None}, errors=(401, 403))
@allow(*ADMIN_ONLY)
async def delete_users(request: Request):
    await db.run(users.delete_all_but_admin)
    return empty(status=204)


@bp.get("/users/me")
@documented("The calling user", responses={200: "User"}, errors=(401, 403))
@allow(*TENANT)
async def me(request: Request):
    user = await db.run(users.get, request.ctx.principal.user_id)
    if user is None:
        raise NotFound("user not found")
    return json(users.to_dict(user))
