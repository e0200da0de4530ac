"""Status webhooks: the outbox, the background sender, and the signature.

`api.queue` calls `enqueue()` inside the transaction that changes a job, so a notification is
stored exactly when the change is: never lost if the process dies right after, never sent
for a change that rolled back. `webhook_sender`, one per API process, delivers the outbox:

- claim: due rows are leased in a short write transaction (`FOR UPDATE SKIP LOCKED` on
  PostgreSQL, `BEGIN IMMEDIATE` on SQLite), so with several processes each row has one
  sender at a time. A lease that runs out (its process died) makes the row due again.
- per-job order: a row is due only when no earlier row of its job is still pending, so a
  later notification never overtakes an earlier one that is being retried.
- send: `api.egress.post` on a thread pool of its own (never the event loop, never the
  database pool); a slow endpoint costs a thread, never an API response.
- result: delivered on 2xx; otherwise retried with exponential backoff and jitter until
  `webhook_give_up` seconds after the change; refused destinations fail at once.

At-least-once: a receiver deduplicates with the `X-Kelpie-Delivery` header.
"""

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from peewee import SQL, fn

from agent.version import __version__
from api import db, egress, users
from api.config import Settings
from api.models import WebhookDelivery
from api.serialize import timestamp

log = logging.getLogger("kelpie.webhooks")

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

SIGNATURE_HEADER = "X-Kelpie-Signature"
DELIVERY_HEADER = "X-Kelpie-Delivery"


# --- The outbox -------------------------------------------------------------------------------

def enqueue(job, status: str, at: datetime, reason: str | None = None) -> None:
    """Store the notification that `job` is now `status` (`reason`: why, for a failure). Call it
    inside the transaction that made the change, with the job as that change left it; a job
    without a webhook needs none."""
    if not job.webhook:
        return
    body = {
        "status": status,
        "job_id": job.id,
        "machine_id": job.machine_id,
        "container_group_id": job.container_group_id,
        "attempt": job.num_attempts,
        "timestamp": timestamp(at),
        "num_failures": job.num_failures,
        "num_interruptions": job.num_interruptions,
        "reason": reason,
    }
    WebhookDelivery.insert(
        job_id=job.id, user_id=job.user_id, url=job.webhook, job_status=status,
        body=json.dumps(body, separators=(",", ":")), status=PENDING, created=at,
        next_attempt=at, attempts=0,
    ).execute()


def for_job(job_id: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.select().where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.id))


def to_dict(delivery: WebhookDelivery) -> dict:
    return {
        "id": delivery.id,
        "job_id": delivery.job_id,
        "job_status": delivery.job_status,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "created": timestamp(delivery.created),
        "last_attempt": timestamp(delivery.last_attempt),
        "last_response_code": delivery.last_response_code,
        # Always null: the receiver's answer is never stored (a tenant-chosen URL must not
        # become a way to read internal services). Kept for clients that expect the field.
        "last_response_body": None,
        "last_duration_ms": delivery.last_duration_ms,
        "last_error": delivery.last_error,
        "next_retry": timestamp(delivery.next_attempt) if delivery.status == PENDING else None,
        "delivered": timestamp(delivery.delivered),
        "body": json.loads(delivery.body),
    }


# --- Signing ----------------------------------------------------------------------------------

def sign(secret: str, body: bytes, at: int) -> str:
    """The X-Kelpie-Signature value: HMAC-SHA256 of "<t>.<raw body>" with the user's secret."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256)
    return f"t={at},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """Check a signature header as a receiver would (used by tests; the docs show the same)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - at) > tolerance:
        return False
    expected = sign(secret, body, at).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


# --- Claiming and recording (database thread pool) ---------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    job_id: str
    url: str
    body: str
    created: datetime
    attempts: int
    token: str
    secret: str | None
    # When this try was leased: a try that began before the give-up moment is not the last one.
    started: datetime


@dataclass(frozen=True)
class Outcome:
    code: int | None = None
    # "HTTP 500", an exception's class name, or our own refusal: never the receiver's words.
    error: str | None = None
    duration_ms: int | None = None
    # Retrying cannot help (a refused destination, a deleted user).
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


def _due(now: datetime):
    earlier = WebhookDelivery.alias("earlier")
    blocked = earlier.select(SQL("1")).where(
        earlier.job_id == WebhookDelivery.job_id, earlier.id < WebhookDelivery.id,
        earlier.status == PENDING)
    return WebhookDelivery.select().where(
        WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt <= now,
        WebhookDelivery.lease_until.is_null() | (WebhookDelivery.lease_until < now),
        ~fn.EXISTS(blocked),
    )


def lease_seconds(settings: Settings) -> float:
    # Longer than any send can take (egress.post keeps to the timeout; name resolution has its
    # own), so a live sender never loses its row to another.
    return 3 * settings.webhook_timeout + 30


def destination(url: str) -> str:
    """What the per-destination limit counts by: scheme, host and port (paths share a host)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port or ''}"


def claim_due(limit: int, settings: Settings, busy: dict[str, int] | None = None,
              busy_urls: tuple[str, ...] = ()) -> list[Claimed]:
    """Lease up to `limit` due notifications to this process, at most `per_destination(settings)`
    to one destination counting the `busy` ones this process is already sending.
    `busy_urls`: URLs of destinations at their limit, left out of the query itself so that a
    long queue for one of them does not hide everyone else's."""
    now = db.utcnow()
    due = _due(now)
    if busy_urls:
        due = due.where(WebhookDelivery.url.not_in(list(busy_urls)))
    # A plain read first: most polls find nothing and then take no write lock at all.
    if not due.exists():
        return []
    lease_until = now + timedelta(seconds=lease_seconds(settings))
    counts = dict(busy or {})
    share = per_destination(settings)
    claimed = []
    with db.write_transaction():
        # Read more than `limit`: some rows may be for destinations at their share.
        query = due.order_by(WebhookDelivery.next_attempt, WebhookDelivery.id).limit(4 * limit)
        for row in db.locked(query, skip_locked=True):
            if len(claimed) >= limit:
                break
            where = destination(row.url)
            if counts.get(where, 0) >= share:
                continue
            counts[where] = counts.get(where, 0) + 1
            token = secrets.token_hex(8)
            WebhookDelivery.update(
                lease_until=lease_until, lease_token=token, attempts=row.attempts + 1,
                last_attempt=now,
            ).where(WebhookDelivery.id == row.id).execute()
            claimed.append(Claimed(row.id, row.job_id, row.url, row.body, row.created,
                                   row.attempts + 1, token, users.webhook_secret(row.user_id), now))
    return claimed


def per_destination(settings: Settings) -> int:
    return max(1, settings.webhook_per_destination or settings.webhook_concurrency // 4)


def backoff(attempts: int, settings: Settings) -> float:
    """Seconds before try number attempts + 1: doubling from retry_base, capped at
    retry_max, each picked at random in its upper half so that senders do not retry in step."""
    delay = min(settings.webhook_retry_max, settings.webhook_retry_base * 2 ** (attempts - 1))
    return delay * random.uniform(0.5, 1.0)


def record(claimed: Claimed, outcome: Outcome, settings: Settings) -> str:
    """Store the result of one try; returns the delivery's status now."""
    now = db.utcnow()
    fields = {
        "last_response_code": outcome.code,
        "last_duration_ms": outcome.duration_ms,
        "last_error": outcome.error,
        "lease_until": None,
        "lease_token": None,
    }
    give_up_at = claimed.created + timedelta(seconds=settings.webhook_give_up)
    if outcome.ok:
        fields.update(status=DELIVERED, delivered=now)
    elif outcome.permanent or claimed.started >= give_up_at:
        fields.update(status=FAILED)
    else:
        # One last try at the give-up moment rather than none after the last long wait.
        retry_at = now + timedelta(seconds=backoff(claimed.attempts, settings))
        fields.update(next_attempt=min(retry_at, give_up_at))
    # Only the lease holder writes: a sender whose lease ran out must not undo a newer result.
    WebhookDelivery.update(**fields).where(
        WebhookDelivery.id == claimed.id, WebhookDelivery.lease_token == claimed.token).execute()
    return fields.get("status", PENDING)


# --- Sending (webhook thread pool) ------------------------------------------------------------

def attempt(claimed: Claimed, settings: Settings, cutoff: egress.Cutoff | None = None) -> Outcome:
    """One POST of a claimed notification, within webhook_timeout in all (or until `cutoff`
    fires). Never raises."""
    if claimed.secret is None:
        return Outcome(error="the job's user no longer exists", permanent=True)
    body = claimed.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Kelpie-Webhooks/{__version__}",
        SIGNATURE_HEADER: sign(claimed.secret, body, int(time.time())),
        DELIVERY_HEADER: str(claimed.id),
    }
    started = time.monotonic()

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        response = egress.post(claimed.url, body, headers, timeout=settings.webhook_timeout,
                               deny_private=settings.webhook_deny_private,
                               allowed_hosts=settings.webhook_allowed_hosts, cutoff=cutoff)
    except egress.Refused as refusal:
        # Our own words about the URL the tenant gave: nothing came from the destination.
        return Outcome(error=f"refused: {refusal}", permanent=True)
    except (OSError, http.client.HTTPException) as error:
        # Only the class (ConnectionRefusedError, TimeoutError…): the message can carry what a
        # host said or how it resolved, which is not the tenant's to read.
        return Outcome(error=type(error).__name__, duration_ms=took())
    except Exception as error:  # a bug must not stop the sender; the row is retried
        log.exception("webhook delivery %s failed unexpectedly", claimed.id)
        return Outcome(error=type(error).__name__, duration_ms=took())
    error = None if 200 <= response.status < 300 else f"HTTP {response.status}"
    return Outcome(code=response.status, error=error, duration_ms=took())


# --- The background loop ----------------------------------------------------------------------

class Sender:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.concurrency = max(1, settings.webhook_concurrency)
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self.in_flight: set[asyncio.Task] = set()
        # What is being sent now, by delivery: its destination and URL, and how to end it.
        self.sending: dict[int, tuple[str, str, egress.Cutoff]] = {}

    async def run(self) -> None:
        try:
            while True:
                free = self.concurrency - len(self.in_flight)
                if free > 0:
                    for claimed in await self._claim(free):
                        self.sending[claimed.id] = (destination(claimed.url), claimed.url,
                                                    egress.Cutoff())
                        task = asyncio.create_task(self._deliver(claimed))
                        self.in_flight.add(task)
                        task.add_done_callback(self.in_flight.discard)
                # Wake when a delivery ends (the next of that job may now be due) or poll.
                if self.in_flight:
                    await asyncio.wait(set(self.in_flight), timeout=self.settings.webhook_poll_interval,
                                       return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(self.settings.webhook_poll_interval)
        except asyncio.CancelledError:
            # Shutting down: never wait on a receiver. Sends under way are cut off now; what
            # is recorded in the moment left is a failed try, the rest is retried once its
            # lease runs out (receivers dedupe by X-Kelpie-Delivery).
            for _, _, cutoff in self.sending.values():
                cutoff.fire()
            if self.in_flight:
                await asyncio.wait(set(self.in_flight), timeout=2)
            raise
        finally:
            self.pool.shutdown(wait=False)

    async def _claim(self, limit: int) -> list[Claimed]:
        busy: dict[str, int] = {}
        urls: dict[str, set[str]] = {}
        for where, url, _ in self.sending.values():
            busy[where] = busy.get(where, 0) + 1
            urls.setdefault(where, set()).add(url)
        share = per_destination(self.settings)
        full = tuple(url for where, count in busy.items() if count >= share
                     for url in sorted(urls[where]))
        try:
            return await db.run(claim_due, limit, self.settings, busy, full)
        except Exception:  # the database away for a moment: try again at the next poll
            log.exception("claiming webhook deliveries failed")
            return []

    async def _deliver(self, claimed: Claimed) -> None:
        loop = asyncio.get_running_loop()
        cutoff = self.sending[claimed.id][2]
        try:
            outcome = await loop.run_in_executor(self.pool, attempt, claimed, self.settings,
                                                 cutoff)
        finally:
            self.sending.pop(claimed.id, None)
        try:
            status = await db.run(record, claimed, outcome, self.settings)
        except Exception:  # not recorded: the lease runs out and the row is tried again
            log.exception("recording webhook delivery %s failed", claimed.id)
            return
        if status != DELIVERED:
            log.info("webhook %s for job %s: %s (%s)", claimed.id, claimed.job_id, status,
                     outcome.error)


async def webhook_sender(app) -> None:
    """Background loop of every API process: deliver the outbox."""
    try:
        await Sender(app.ctx.settings).run()
    except asyncio.CancelledError:
        # The server is stopping and the sends under way are recorded: a normal end, not the
        # "cancelled before it completed" warning Sanic logs for every shutdown otherwise.
        return
