"""Kelpie API keys: issued, listed, revoked, and turned into a Principal on every request.

A key has an id (shown in lists and in the audit trail), a name, a scope (`user`, or `worker`
bound to container groups, for node images that must never read or submit jobs), an optional
expiry and a last-used time. The secret is shown once, when made, and stored only as a hash.
"""

import hashlib
import secrets
import time
from datetime import timedelta

from api import db
from api.errors import NotFound, ValidationError
from api.models import ApiKey, User
from api.principal import ADMIN, USER, WORKER, Principal
from api.serialize import timestamp

ISSUABLE_SCOPES = (USER, WORKER)
# PostgreSQL channel on which a revocation is announced to every API process (api/wakeups.py's
# listener hears it), payload the key's hash.
REVOKED_CHANNEL = "kelpie_keys"
# last_used is written at most this often per key, so a heartbeat stays one read.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> str:
    return "kelpie_" + secrets.token_urlsafe(32)


def new_id() -> str:
    return "key_" + secrets.token_hex(8)


def insert(user_id: str, secret: str, *, name: str | None = None, scope: str = USER,
           container_group_ids: list[str] | None = None, expires=None) -> ApiKey:
    """Store a key (inside the caller's transaction)."""
    return ApiKey.create(key_hash=hash_key(secret), id=new_id(), user=user_id, name=name,
                         scope=scope, container_group_ids=container_group_ids,
                         expires=expires, created=db.utcnow())


def issue(user_id: str, *, name: str | None = None, scope: str = USER,
          container_group_ids: list[str] | None = None, expires=None) -> tuple[ApiKey, str]:
    """A new key for an existing user: (its row, the secret in clear)."""
    secret = new_secret()
    with db.write_transaction():
        user = User.get_or_none(User.id == user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        if user.is_admin:
            # The administrator has exactly one key, KELPIE_ADMIN_KEY (api/users.ensure_admin
            # removes any other at start-up); a second one would be a hidden master key.
            raise ValidationError("user_id", "the administrator's only key is KELPIE_ADMIN_KEY")
        row = insert(user_id, secret, name=name, scope=scope,
                     container_group_ids=container_group_ids, expires=expires)
    return row, secret


def authenticate(secret: str) -> Principal | None:
    """The principal a key stands for; None for unknown, revoked or expired keys."""
    row = (ApiKey.select(ApiKey, User).join(User)
           .where(ApiKey.key_hash == hash_key(secret)).first())
    now = db.utcnow()
    if row is None or (row.expires is not None and row.expires <= now):
        return None
    if row.last_used is None or now - row.last_used >= LAST_USED_GRANULARITY:
        ApiKey.update(last_used=now).where(ApiKey.key_hash == row.key_hash).execute()
    user = row.user
    scope = ADMIN if user.is_admin else row.scope
    groups = tuple(row.container_group_ids) if scope == WORKER else None
    return Principal(user_id=user.id, scope=scope, name=user.name, key_id=row.id,
                     container_group_ids=groups, key_hash=row.key_hash)


# Written out: it runs for every long poll an idle agent makes (api/routes/work.py, the empty
# cache), where Peewee building the query cost more CPU than the database spent answering it.
_IS_VALID = ("SELECT 1 FROM api_keys WHERE key_hash = {p}"
             " AND (expires IS NULL OR expires > {p}) LIMIT 1")


def is_valid(key_hash: str) -> bool:
    """Whether the key still exists and has not expired (one read by primary key)."""
    statement = _IS_VALID.format(p=db.database.param)
    return db.database.execute_sql(statement, (key_hash, db.utcnow())).fetchone() is not None


# --- keys recently found valid (this process) -----------------------------------------------
#
# A poll answered from the empty cache (api/routes/work.py) runs no statement that would prove
# the caller's key still exists. Reading the key on every such poll was most of what the poll
# cost, so it is read only when this process last found the key valid longer ago than
# KELPIE_KEY_RECHECK_S: that is the bound on how long a revoked or expired key can still be
# answered [] there. A revocation through `revoke` clears the stamp at once: in this process
# directly, in the others through REVOKED_CHANNEL (PostgreSQL), so in practice the bound only
# matters for a key that expires, or one deleted behind the API's back.

_seen_valid: dict[str, float] = {}
SEEN_VALID_MAX = 10_000


def seen_valid(key_hash: str) -> None:
    """A read or a statement that checks the key just found it valid."""
    if len(_seen_valid) >= SEEN_VALID_MAX:
        _seen_valid.clear()
    _seen_valid[key_hash] = time.monotonic()


def valid_within(key_hash: str, seconds: float) -> bool:
    seen = _seen_valid.get(key_hash)
    return seen is not None and time.monotonic() - seen < seconds


def forget(key_hash: str | None = None) -> None:
    """The key (None: every key) must be read again before an answer that reads nothing."""
    if key_hash is None:
        _seen_valid.clear()
    else:
        _seen_valid.pop(key_hash, None)


def for_user(user_id: str) -> list[ApiKey]:
    return list(ApiKey.select().where(ApiKey.user == user_id).order_by(ApiKey.created))


def revoke(user_id: str, key_id: str) -> None:
    """Delete the key: the next request with it, in any process, is refused."""
    with db.write_transaction():
        row = ApiKey.get_or_none(ApiKey.user == user_id, ApiKey.id == key_id)
        if row is None or not ApiKey.delete().where(ApiKey.key_hash == row.key_hash).execute():
            raise NotFound(f"key {key_id} not found")
        if db.is_postgres():
            # Sent on commit, and only then: every process forgets the key's stamp.
            db.database.execute_sql("SELECT pg_notify(%s, %s)", (REVOKED_CHANNEL, row.key_hash))
    forget(row.key_hash)


def to_dict(key: ApiKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "container_group_ids": key.container_group_ids,
        "created": timestamp(key.created),
        "expires_at": timestamp(key.expires),
        "last_used": timestamp(key.last_used),
    }
