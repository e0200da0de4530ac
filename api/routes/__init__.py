"""HTTP handlers, one blueprint per resource. Handlers parse, authorise, call `api.queue`
(or `api.users`) on the database pool, and serialise; they hold no state of their own."""

from sanic import Request
from sanic.exceptions import BadRequest
from sanic_ext import openapi
from sanic_ext.extensions.openapi.definitions import Parameter, RequestBody, Response

from api.errors import ValidationError
from api.schemas import ref

ERROR_RESPONSES = {
    400: "Invalid input; `message` names the field",
    401: "No credentials",
    403: "Invalid credentials, or not allowed",
    404: "No such resource (or it belongs to another user)",
    409: "Conflicts with the job's current state",
    413: "The body is larger than KELPIE_MAX_BODY_BYTES (default 8 MiB)",
    503: "Salad's identity services are unreachable and nothing is cached",
}


def documented(summary: str, *, responses: dict[int, str | None], body: str | None = None,
               parameters: list[Parameter] | None = None, errors=(400,),
               tag: str | None = None, secured: bool = True):
    """OpenAPI for a route: the success responses (status → schema name) and its errors."""
    response_list = [
        Response({"application/json": ref(schema)} if schema else None, status=status,
                 description=summary)
        for status, schema in responses.items()
    ]
    if secured:
        # Any authenticated route can answer these: a missing Salad header (400), no or bad
        # credentials (401/403), Salad's identity services down (503).
        errors = {*errors, 400, 401, 403, 503}
    response_list += [
        Response({"application/json": ref("Error")}, status=status,
                 description=ERROR_RESPONSES[status])
        for status in sorted(errors)
    ]
    kwargs = {}
    if body:
        kwargs["body"] = RequestBody({"application/json": ref(body)}, required=True)
    if parameters:
        kwargs["parameter"] = parameters
    define = openapi.definition(summary=summary, response=response_list, tag=tag, **kwargs)

    def decorate(handler):
        handler = define(handler)
        if secured:
            # Any one of the three ways in (each call adds an alternative requirement).
            for requirement in SECURITY_ALTERNATIVES:
                handler = openapi.secured(requirement)(handler)
        return handler

    return decorate


SECURITY_ALTERNATIVES = (
    {"KelpieKey": []},
    {"SaladApiKey": [], "SaladOrganization": [], "SaladProject": []},
    {"SaladJWT": [], "SaladProject": []},
)


def json_body(request: Request):
    """The request's JSON body, or a 400 that says it is not JSON."""
    try:
        return request.json
    except BadRequest as error:
        # Sanic hides the parser's error behind its own. Nesting deeper than the parser allows
        # (ujson: 1024 levels; json: the recursion limit) may be valid JSON, but we refuse it,
        # and the caller should be told that rather than "not valid".
        cause = error.__context__
        if isinstance(cause, RecursionError) or "depth limit" in str(cause):
            raise ValidationError("body", "is too deeply nested (at most 1024 levels of arrays "
                                  "and objects)") from None
        raise ValidationError("body", "is not valid JSON") from None


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(name, "must be an integer") from None
    if not minimum <= value <= maximum:
        raise ValidationError(name, f"must be between {minimum} and {maximum}")
    return value


def query_bool(request: Request, name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValidationError(name, "must be true or false")
