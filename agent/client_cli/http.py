"""The client's one HTTP call, on urllib3: JSON in, JSON out, errors sorted for exit codes.

Reads and cancels are retried a few times on connection errors and 5xx, since repeating them
changes nothing. A submission is retried only when the connection could not even be opened:
once the request may have reached the API, sending it again could submit the job twice.
"""

import json

import urllib3

from agent import retry
from agent.client import decode_body
from agent.client_cli.errors import Refused, Unreachable
from agent.config import ClientConfig
from agent.version import __version__

ATTEMPTS = 3  # with agent.retry's pauses, a person waits at most 0.5 s + 1 s for retries


class Api:
    def __init__(self, config: ClientConfig, attempts: int = ATTEMPTS):
        self.config = config
        self.attempts = attempts
        self.http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False,
                                        timeout=urllib3.Timeout(connect=5, read=30))

    def request(self, method: str, path: str, body=None):
        """The decoded JSON answer of a 2xx; raises Refused (4xx) or Unreachable."""
        headers = {"User-Agent": f"kelpie-cli/{__version__}", "Accept": "application/json",
                   **self.config.auth_headers}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        idempotent = method in ("GET", "DELETE")
        problem = ""
        for _ in retry.Attempts(self.attempts):
            try:
                response = self.http.request(method, self.config.api_url + path, body=data,
                                             headers=headers)
            except urllib3.exceptions.NewConnectionError as error:
                problem = _reason(error)
                continue  # never reached the API: safe to try again whatever the method
            except urllib3.exceptions.HTTPError as error:
                problem = _reason(error)
                if idempotent:
                    continue
                raise Unreachable(f"{method} {path}: {problem} (the request may or may not "
                                  "have been applied)") from None
            payload = decode_body(response.data)
            if response.status < 400:
                return payload
            if response.status < 500 and response.status != 429:
                raise Refused(response.status, payload)
            problem = f"{response.status} {_short(payload)}"
            if not idempotent and response.status != 429:  # 429: refused before doing anything
                break
        raise Unreachable(f"{method} {self.config.api_url}{path}: {problem}")


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error)


def _short(payload) -> str:
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("error") or "")
    return str(payload or "")[:200]
