"""The one client for Salad's public API (autoscaling, reallocation, Salad identity).

Synchronous on purpose: callers on the event loop run these functions with
`asyncio.to_thread` (or `salad.call`), never directly. Every call

- sends the API key in `Salad-Api-Key` (Kelpie's own `KELPIE_SALAD_API_KEY` unless the caller
  passes one, e.g. a user's key to check who they are);
- waits at most `timeout` seconds per attempt;
- is retried with exponential backoff on 429, 5xx and connection errors, honouring a
  `Retry-After` header, up to `retries` more attempts;
- holds one of `concurrency` slots while it is on the wire, so a tick over many container
  groups cannot flood Salad (the slot is released while backing off);
- never follows a redirect: urllib would resend `Salad-Api-Key` (Kelpie's own key) to
  wherever the answer points. A 3xx is an error like any other.

Configure once per process with `configure(settings)` (done by `create_app`).
"""

import asyncio
import email.utils
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from api.config import Settings


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx reaches the caller as an HTTPError


# Every call to Salad's services (this client, api/salad_auth.py) goes through this opener.
OPENER = urllib.request.build_opener(_NoRedirects)

# Longest wait we accept from a Retry-After header, and the cap on our own backoff.
MAX_RETRY_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0


class SaladError(Exception):
    """A call to Salad's API failed; `status` is the HTTP status (None: never answered)."""

    def __init__(self, message: str, status: int | None = None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


class SaladNotFound(SaladError):
    """404: the organization, project, container group or instance does not exist (for us)."""


class SaladNotConfigured(SaladError):
    """No API key: KELPIE_SALAD_API_KEY is not set."""


@dataclass
class Client:
    base_url: str
    api_key: str | None
    timeout: float = 10.0
    concurrency: int = 4
    retries: int = 5
    backoff: float = 0.5

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/")
        self._slots = threading.BoundedSemaphore(max(1, self.concurrency))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Client":
        return cls(settings.salad_api_url, settings.salad_api_key,
                   timeout=settings.salad_api_timeout, concurrency=settings.salad_api_concurrency,
                   retries=settings.salad_api_retries, backoff=settings.salad_api_backoff)

    def request(self, method: str, path: str, body=None, *,
                content_type: str = "application/json", api_key: str | None = None):
        """One API call with retries; returns the decoded JSON body (None when empty)."""
        key = api_key or self.api_key
        if not key:
            raise SaladNotConfigured("KELPIE_SALAD_API_KEY is not set")
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            request = urllib.request.Request(self.base_url + path, data=data, method=method)
            request.add_header("Salad-Api-Key", key)
            request.add_header("Accept", "application/json")
            request.add_header("User-Agent", "kelpie-api")
            if data is not None:
                request.add_header("Content-Type", content_type)
            try:
                with self._slots, OPENER.open(request, timeout=self.timeout) as response:
                    return _decode(response.read())
            except urllib.error.HTTPError as error:
                status, payload = error.code, _decode_quietly(error.read())
                retry_after = _retry_after(error.headers.get("Retry-After"))
                if (status == 429 or status >= 500) and attempt < self.retries:
                    attempt += 1
                    time.sleep(self._delay(attempt, retry_after))
                    continue
                cls = SaladNotFound if status == 404 else SaladError
                raise cls(f"{method} {path}: HTTP {status} {_message(payload)}".rstrip(),
                          status=status, body=payload) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(self._delay(attempt, None))
                    continue
                reason = getattr(error, "reason", error)
                raise SaladError(f"{method} {path}: {reason}") from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        # Full jitter: many API processes backing off together do not retry in step.
        return random.uniform(0, min(MAX_BACKOFF_S, self.backoff * 2 ** (attempt - 1)))


def _decode(raw: bytes):
    return json.loads(raw) if raw.strip() else None


def _decode_quietly(raw: bytes):
    try:
        return _decode(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500]


def _message(payload) -> str:
    if isinstance(payload, dict):
        return str(payload.get("detail") or payload.get("title") or payload.get("message") or "")
    return payload or ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


# --- The process-wide client -------------------------------------------------------------------

_client: Client | None = None


def configure(settings: Settings) -> Client:
    global _client
    _client = Client.from_settings(settings)
    return _client


def client() -> Client:
    if _client is None:
        raise SaladNotConfigured("the Salad API client is not configured")
    return _client


def is_configured() -> bool:
    return _client is not None and bool(_client.api_key)


async def call(func, *args, **kwargs):
    """Run one of the functions below off the event loop."""
    return await asyncio.to_thread(func, *args, **kwargs)


# --- Container groups --------------------------------------------------------------------------

def _containers(org: str, project: str, *rest: str) -> str:
    parts = ["organizations", org, "projects", project, "containers", *rest]
    return "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)


def list_container_groups(org: str, project: str, *, api_key: str | None = None) -> list[dict]:
    """Every container group of a project: dicts with id, name, replicas, current_state."""
    body = client().request("GET", _containers(org, project), api_key=api_key) or {}
    return list(body.get("items") or [])


def find_container_group(org: str, project: str, container_group_id: str, *,
                         api_key: str | None = None) -> dict | None:
    """The project's container group with this id, or None (Salad addresses groups by name)."""
    for group in list_container_groups(org, project, api_key=api_key):
        if group.get("id") == container_group_id:
            return group
    return None


def get_container_group(org: str, project: str, name: str) -> dict:
    return client().request("GET", _containers(org, project, name)) or {}


def container_group_status(group: dict) -> str | None:
    """`running`, `stopped`, `deploying`, … as Salad reports it."""
    return (group.get("current_state") or {}).get("status")


def start_container_group(org: str, project: str, name: str) -> None:
    client().request("POST", _containers(org, project, name, "start"))


def stop_container_group(org: str, project: str, name: str) -> None:
    client().request("POST", _containers(org, project, name, "stop"))


def set_replicas(org: str, project: str, name: str, replicas: int) -> None:
    client().request("PATCH", _containers(org, project, name), {"replicas": replicas},
                     content_type="application/merge-patch+json")


def reallocate_instance(org: str, project: str, name: str, machine_id: str) -> None:
    """Move the container group's instance off `machine_id` onto another machine."""
    client().request("POST", _containers(org, project, name, "instances", machine_id, "reallocate"))
