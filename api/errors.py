"""The errors the API answers with, and the handler that turns every exception into
`{"error": ..., "message": ...}` JSON."""

import logging

from sanic import Request
from sanic.exceptions import RequestCancelled, SanicException
from sanic.handlers import ErrorHandler
from sanic.response import json

log = logging.getLogger("kelpie.api")

# HTTP status → the short machine-readable `error` code.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(SanicException):
    """An error whose message is safe and useful to show the caller."""

    status_code = 400

    def __init__(self, message: str, *, status: int | None = None, **details):
        super().__init__(message, status_code=status or self.status_code)
        self.details = details


class ValidationError(ApiError):
    status_code = 400

    def __init__(self, field: str, message: str, **details):
        super().__init__(f"{field}: {message}" if field else message, field=field, **details)
        self.field = field


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unavailable(ApiError):
    status_code = 503


class JsonErrorHandler(ErrorHandler):
    def default(self, request: Request, exception: Exception):
        status = getattr(exception, "status_code", 500) or 500
        if isinstance(exception, RequestCancelled):
            # The client hung up mid-request (a load balancer timeout, a worker killed): normal
            # on interruptible nodes, and nobody is left to answer.
            log.debug("request cancelled by the client: %s %s", request.method, request.path)
            return json({"error": "cancelled", "message": "client disconnected"}, status=499)
        if status >= 500 and not isinstance(exception, ApiError):
            log.exception("unhandled error on %s %s", request.method, request.path,
                          exc_info=exception)
            message = "internal error"
        elif status == 404 and getattr(request, "route", None) is None:
            # The router's own message drops the leading slash ("Requested URL  not found").
            message = (f"no route {request.method} {request.path}: the API's routes are listed "
                       "at /docs, the dashboard is at /ui")
        else:
            message = str(exception) or ERROR_CODES.get(status, "error")
        body = {"error": ERROR_CODES.get(status, "internal_error"), "message": message}
        body.update(getattr(exception, "details", {}) or {})
        headers = getattr(exception, "headers", None) or {}
        return json(body, status=status, headers=headers)
