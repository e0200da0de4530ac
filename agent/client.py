"""The Kelpie API as the worker sees it, on urllib3 (the worker protocol: the original's routes in
../shared/spec/original-routes.md, and docs/agent.md).

Connection errors and 5xx answers are retried with backoff and jitter; 4xx answers are final and
raised as `ApiError` so the caller can tell "the API said no" (e.g. 409: not our job any more) from
"the API is away" (`ApiUnavailable`).
"""

import base64
import json
import threading
import time
from urllib.parse import urlencode

import urllib3

from agent import retry
from agent.config import Config
from agent.imds import Imds, ImdsUnavailable
from agent.log import get_logger
from agent.version import __version__

log = get_logger(__name__)


class ApiError(Exception):
    """The API answered with a 4xx status: retrying will not help."""

    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        super().__init__(f"API answered {status}: {body}")


class ApiUnavailable(Exception):
    """No usable answer after every attempt (connection errors, timeouts, 5xx)."""


# Beyond the `wait` it asked for, how long a long poll may take to be answered before it counts
# as a failed call (and is retried like any other).
POLL_TIMEOUT_MARGIN_S = 15.0


class ApiClient:
    def __init__(self, config: Config, imds: Imds, stop: threading.Event | None = None):
        self.config = config
        self.imds = imds
        self.stop = stop
        self.http = urllib3.PoolManager(
            num_pools=2, maxsize=4, retries=False,
            timeout=urllib3.Timeout(connect=5, read=30))
        self._jwt: str | None = None
        self._jwt_renew_at: float | None = None  # wall-clock time to fetch a fresh one
        self._jwt_lock = threading.Lock()
        self._organization: str | None = None  # read from the IMDS token when not configured

    # --- authentication (protocol.md: the first that applies) ---

    def _auth_headers(self) -> dict:
        c = self.config
        if c.kelpie_api_key:
            return {"X-Kelpie-Key": c.kelpie_api_key}
        if c.salad_api_key:
            return {"Salad-Api-Key": c.salad_api_key,
                    "Salad-Organization": c.salad_organization or self._token_organization(),
                    "Salad-Project": c.salad_project or ""}
        headers = {"Authorization": f"Bearer {self._current_jwt()}"}
        if c.salad_project:
            headers["Salad-Project"] = c.salad_project
        return headers

    def _current_jwt(self) -> str:
        """The IMDS JWT, fetched again shortly before it expires (or after a refusal)."""
        with self._jwt_lock:
            renew_due = self._jwt_renew_at is not None and time.time() >= self._jwt_renew_at
            if self._jwt is None or renew_due:
                try:
                    jwt = self.imds.token()
                except ImdsUnavailable as error:
                    if self._jwt is not None:
                        return self._jwt  # keep the old one while it may still be good
                    raise ApiUnavailable(
                        f"no credentials: IMDS token unavailable ({error})") from None
                self._jwt, self._jwt_renew_at = jwt, jwt_renew_time(jwt)
            return self._jwt

    def _token_organization(self) -> str:
        """SALAD_ORGANIZATION when unset: the organization the node's IMDS token names."""
        if self._organization is None:
            self._organization = str(jwt_claims(self._current_jwt()).get(
                "salad_organization_name") or "")
        return self._organization

    def _drop_jwt(self) -> None:
        with self._jwt_lock:
            self._jwt = None

    # --- transport ---

    def request(self, method: str, path: str, body: dict | None = None, *,
                attempts: int | None = None, deadline: float | None = None,
                timeout: float | None = None):
        """One API call with retries; returns (status, decoded body).

        Retries until `attempts` are used up or, if `deadline` (a time.monotonic() value) is
        given, until then, whichever ends later.
        """
        url = self.config.api_url + path
        data = None if body is None else json.dumps(body).encode()
        # Only when given: passing timeout=None to urllib3 would mean "wait forever".
        bounded = {"timeout": urllib3.Timeout(connect=min(5, timeout), read=timeout)
                   } if timeout else {}

        def send():
            headers = {"User-Agent": f"kelpie-agent/{__version__}",
                       "Content-Type": "application/json", **self._auth_headers()}
            response = self.http.request(method, url, body=data, headers=headers, **bounded)
            return response.status, decode_body(response.data)

        tries = retry.Attempts(attempts or self.config.max_retries,
                               self.stop if deadline is None else None, deadline=deadline)
        problem = ""
        for attempt in tries:
            try:
                status, payload = send()
                if status in (401, 403) and self._jwt:
                    # The IMDS JWT may have expired or been rotated: fetch a fresh one and
                    # ask again at once, within the same attempt.
                    self._drop_jwt()
                    status, payload = send()
                if status < 400:
                    return status, payload
                if status < 500 and status != 429:
                    raise ApiError(status, payload)
                problem = f"{status} {payload}"
            except (urllib3.exceptions.HTTPError, ApiUnavailable) as error:
                problem = str(error)
            if not tries.last:
                log.warning("API call failed, retrying",
                            extra={"method": method, "path": path, "error": problem,
                                   "attempt": attempt, "retry_in_s": round(tries.next_delay, 2)})
        if tries.stopped:
            raise ApiUnavailable(f"{method} {path}: stopped while retrying ({problem})")
        raise ApiUnavailable(f"{method} {path}: {problem}")

    # --- the worker endpoints ---

    def _identity(self) -> dict:
        return {"machine_id": self.config.machine_id,
                "container_group_id": self.config.container_group_id}

    def poll_work(self, wait: float = 0) -> dict | None:
        """The next job, or None. `wait` > 0 asks the API to hold the poll up to that many
        seconds until a job arrives (a server that does not know `wait` answers at once)."""
        query = {"machine_id": self.config.machine_id}
        if self.config.container_group_id:
            query["container_group_id"] = self.config.container_group_id
        timeout = None
        if wait > 0:
            query["wait"] = f"{wait:g}"
            timeout = wait + POLL_TIMEOUT_MARGIN_S  # the hold, plus the usual time to answer
        _, body = self.request("GET", "/work?" + urlencode(query), timeout=timeout)
        if isinstance(body, list) and body:
            return body[0]
        if isinstance(body, dict) and body.get("id"):  # tolerate a bare job object
            return body
        return None

    def heartbeat(self, job_id: str, interval: float = 30, attempts: int = 2) -> str | None:
        """The job's status as the API sees it for this machine ("running", "canceled", …), or
        None when the answer carries no usable status (a proxy's "200 ok", an empty body): the
        heartbeat went through, but it says nothing about the job either way.
        A hanging API must not hold up the next heartbeat: each try is bounded by the job's
        heartbeat interval (between 2 and 30 s)."""
        _, body = self.request("POST", f"/jobs/{job_id}/heartbeat", self._identity(),
                               attempts=attempts, timeout=min(30.0, max(2.0, interval)))
        status = body.get("status") if isinstance(body, dict) else None
        if isinstance(status, str) and status:
            return status
        log.warning("heartbeat answer without a usable status",
                    extra={"body": str(body)[:200]})
        return None

    def report_completed(self, job_id: str) -> dict:
        """The API's answer: {"message", "status", "recorded"}; recorded false means the
        report came late (the job was no longer ours) and changed nothing."""
        deadline = time.monotonic() + self.config.report_timeout
        _, body = self.request("POST", f"/jobs/{job_id}/completed", self._identity(),
                               deadline=deadline)
        return body if isinstance(body, dict) else {}

    def report_failed(self, job_id: str, exit_code: int | None, reason: str | None,
                      kind: str = "job") -> dict:
        """kind "job": the job's fault, charged to its max_failures; kind "node": this
        machine could not run it (storage, disk, work directory), the job is not charged.
        Returns the answer as report_completed does."""
        deadline = time.monotonic() + self.config.report_timeout
        body = {**self._identity(), "exit_code": exit_code, "reason": reason, "kind": kind}
        _, answer = self.request("POST", f"/jobs/{job_id}/failed", body, deadline=deadline)
        return answer if isinstance(answer, dict) else {}


def jwt_claims(jwt: str) -> dict:
    """The claims of a JWT, read without verifying it (the API verifies it); {} if unreadable."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_renew_time(jwt: str) -> float | None:
    """When to renew a JWT: a fifth of its lifetime (at most a minute) before `exp`."""
    claims = jwt_claims(jwt)
    try:
        expires = float(claims["exp"])
    except (KeyError, ValueError, TypeError):
        return None
    issued = float(claims.get("iat") or time.time())
    return expires - min(60.0, max(0.0, expires - issued) / 5)


def decode_body(raw: bytes):
    """An answer's body: its JSON, or the start of its text when it is not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500]
