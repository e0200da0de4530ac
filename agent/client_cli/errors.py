"""What can go wrong in a client command, and the exit code each one means to a script.

| code | meaning |
| --- | --- |
| 0 | done (for `get --watch`: the job completed) |
| 1 | the API refused the request (4xx: bad input, unknown job, wrong key, finished job) |
| 2 | usage: bad arguments, configuration or job file; nothing was sent |
| 3 | the API could not be reached, or kept failing (connection, timeout, 5xx) |
| 4 | `get --watch`: the job ended failed |
| 5 | `get --watch`: the job ended canceled |
"""

OK, REFUSED, USAGE, UNREACHABLE, JOB_FAILED, JOB_CANCELED = 0, 1, 2, 3, 4, 5


class ClientError(Exception):
    exit_code = USAGE


class UsageError(ClientError):
    """Bad arguments, configuration or input file: nothing was sent."""

    exit_code = USAGE


class Refused(ClientError):
    """The API answered 4xx. `body` is its JSON error ({"error", "message", "field"})."""

    exit_code = REFUSED

    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        if isinstance(body, dict):
            text = str(body.get("message") or body.get("error") or body)
            if body.get("field"):
                text += f" (field: {body['field']})"
        else:
            text = str(body or "no details")
        super().__init__(f"the API refused the request ({status}): {text}")


class Unreachable(ClientError):
    """No usable answer: the connection failed, timed out, or the API kept answering 5xx."""

    exit_code = UNREACHABLE
