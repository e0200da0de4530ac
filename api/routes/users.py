"""Users and API keys (administrator), and `GET /users/me` for anyone."""

from sanic import Blueprint, Request
from sanic.response import json

from api import db, fields, users
from api.auth import admin_only, authenticated
from api.errors import NotFound, ValidationError
from api.routes import documented, json_body

bp = Blueprint("users")


def _optional_string(body: dict, name: str) -> str | None:
    return fields.text(body.get(name), name, required=False, max_length=255) or None


@bp.post("/users")
@documented("Administrator: create a user and its first API key", body="UserCreate",
            responses={201: "UserWithToken"})
@admin_only
async def create_user(request: Request):
    body = json_body(request)
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(body) - {"name", "org", "project"}
    if unknown:
        raise ValidationError(sorted(unknown)[0], "is not a known field")
    name = fields.text(body.get("name"), "name", max_length=255)
    user, key = await db.run(users.create, name, _optional_string(body, "org"),
                             _optional_string(body, "project"))
    return json({**users.to_dict(user), "token": key}, status=201)


@bp.post("/users/<user_id:str>/token")
@documented("Administrator: issue another API key for a user", responses={201: "Token"},
            errors=(401, 403, 404))
@admin_only
async def issue_token(request: Request, user_id: str):
    if not fields.is_storable(user_id):
        raise NotFound(f"user {user_id!r} not found")
    key = await db.run(users.issue_key, user_id)
    return json({"token": key}, status=201)


@bp.delete("/users")
@documented("Administrator: delete every user except the administrator (and their jobs)",
            responses={200: "Count"}, errors=(401, 403))
@admin_only
async def delete_users(request: Request):
    count = await db.run(users.delete_all_but_admin)
    request.app.ctx.key_cache.clear()
    return json({"count": count})


@bp.get("/users/me")
@documented("The calling user", responses={200: "User"}, errors=(401, 403))
@authenticated
async def me(request: Request):
    user = await db.run(users.get, request.ctx.principal.user_id)
    if user is None:
        raise NotFound("user not found")
    return json(users.to_dict(user))
