"""Salad's instance metadata service (IMDS): JWT, deletion cost, reallocation.

Off Salad there is no IMDS; the first failed call is logged once and later calls are skipped for a
while, so a missing IMDS never slows the agent down or stops it.
"""

import json
import threading
import time

import urllib3

from agent.log import get_logger

log = get_logger(__name__)

RETRY_UNREACHABLE_AFTER_S = 60.0
# Deletion cost while final outputs are uploading: the highest value, "do not take this node".
DELETION_COST_UPLOADING = 999999999


class ImdsUnavailable(Exception):
    pass


class Imds:
    def __init__(self, base_url: str, timeout: float = 2.0):
        self.base_url = base_url.rstrip("/")
        self.http = urllib3.PoolManager(
            num_pools=1, maxsize=2, retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self._lock = threading.Lock()
        self._unreachable_since: float | None = None
        self._noted_unreachable = False
        self._last_deletion_cost: int | None = None

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        with self._lock:
            if (self._unreachable_since is not None
                    and time.monotonic() - self._unreachable_since < RETRY_UNREACHABLE_AFTER_S):
                raise ImdsUnavailable("instance metadata service unreachable")
        headers = {"Metadata": "true"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self.http.request(method, self.base_url + path, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as error:
            with self._lock:
                self._unreachable_since = time.monotonic()
                if not self._noted_unreachable:
                    self._noted_unreachable = True
                    log.warning("no instance metadata service; carrying on without it",
                                extra={"imds_url": self.base_url, "error": str(error)})
            raise ImdsUnavailable(str(error)) from None
        with self._lock:
            self._unreachable_since = None
        if response.status >= 400:
            raise ImdsUnavailable(f"{method} {path} answered {response.status}")
        if not response.data:
            return None
        try:
            return json.loads(response.data)
        except ValueError:
            return None

    def token(self) -> str:
        body = self._call("GET", "/v1/token") or {}
        jwt = body.get("jwt")
        if not jwt:
            raise ImdsUnavailable("IMDS /v1/token answered no jwt")
        return jwt

    def set_deletion_cost(self, cost: int) -> None:
        """Best effort; only sends when the value changes."""
        if cost == self._last_deletion_cost:
            return
        try:
            self._call("PUT", "/v1/deletion-cost", {"deletion_cost": int(cost)})
            self._last_deletion_cost = cost
        except ImdsUnavailable as error:
            log.debug("deletion cost not set", extra={"error": str(error)})

    def reallocate(self, reason: str) -> bool:
        try:
            self._call("POST", "/v1/reallocate", {"reason": reason})
            log.info("asked IMDS to reallocate this node", extra={"reason": reason})
            return True
        except ImdsUnavailable as error:
            log.warning("could not ask IMDS to reallocate", extra={"error": str(error)})
            return False
