"""Idempotency-Key on submissions: a client that timed out on POST /jobs (or /jobs/batch) and
retries with the same key gets the original answer, not a second job.

The key belongs to the tenant (user and Salad project); its first answer is stored in the
same transaction that creates the jobs, so a stored answer always names jobs that exist, and
a retry within KEY_LIFETIME replays it byte for byte in meaning (same status, same body). The
same key with a different request is a client bug and answers 409.
"""

import hashlib
import json
from datetime import timedelta

from api import db, queue
from api.errors import Conflict, ValidationError
from api.models import IdempotencyKey
from api.principal import Principal

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
KEY_LIFETIME = timedelta(hours=24)


def key_of(headers) -> str | None:
    """The request's Idempotency-Key, validated; None when there is none."""
    key = headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_LENGTH or not key.isprintable() or not key.isascii():
        raise ValidationError(HEADER, f"must be 1 to {MAX_LENGTH} printable ASCII characters")
    return key


def fingerprint(path: str, body) -> str:
    """What makes two requests "the same": the route and the JSON body, whatever its spacing
    or key order."""
    canonical = json.dumps([path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_once(principal: Principal, key: str, request_hash: str, specs: list[dict],
                render) -> tuple[int, object, bool]:
    """Submit `specs` unless this tenant's `key` was used within KEY_LIFETIME.

    `render(jobs) -> (status, body)` makes the answer that is stored and returned. Returns
    (status, body, replayed).
    """
    project = principal.project or ""
    now = db.utcnow()
    with db.write_transaction():
        stored = _find(principal.user_id, project, key, now)
        if stored is None:
            p = "%s" if db.is_postgres() else "?"
            # An expired answer gives way to the new one. Only an expired one: a concurrent
            # request's answer, committed after our look above, must survive this statement
            # (it sees rows committed since), or both requests would create jobs.
            IdempotencyKey.delete().where(
                IdempotencyKey.user_id == principal.user_id, IdempotencyKey.project == project,
                IdempotencyKey.idempotency_key == key,
                IdempotencyKey.created <= now - KEY_LIFETIME).execute()
            # Claim the key first. On PostgreSQL a concurrent request with the same key waits
            # here for ours to commit, then inserts nothing and replays our answer.
            cursor = db.database.execute_sql(
                "INSERT INTO idempotency_keys (user_id, project, idempotency_key, request_hash,"
                f" status, body, created) VALUES ({p}, {p}, {p}, {p}, 0, '', {p})"
                " ON CONFLICT DO NOTHING",
                (principal.user_id, project, key, request_hash, now))
            if cursor.rowcount == 1:
                status, body = render(queue.submit(principal, specs))
                IdempotencyKey.update(status=status, body=json.dumps(body)).where(
                    IdempotencyKey.user_id == principal.user_id,
                    IdempotencyKey.project == project,
                    IdempotencyKey.idempotency_key == key).execute()
                return status, body, False
            stored = _find(principal.user_id, project, key, now)
    if stored.request_hash != request_hash:
        raise Conflict(f"{HEADER} {key!r} was used for a different request in the last "
                       f"{KEY_LIFETIME.total_seconds() / 3600:g} hours", field=HEADER)
    return stored.status, json.loads(stored.body), True


def _find(user_id: str, project: str, key: str, now) -> IdempotencyKey | None:
    return IdempotencyKey.select().where(
        IdempotencyKey.user_id == user_id, IdempotencyKey.project == project,
        IdempotencyKey.idempotency_key == key,
        IdempotencyKey.created > now - KEY_LIFETIME).first()
