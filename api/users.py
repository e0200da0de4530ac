"""Users and their API keys. Keys are shown once, when made, and stored only as hashes."""

import hashlib
import secrets
import uuid

from api import db
from api.errors import NotFound, ValidationError
from api.models import ApiKey, User
from api.serialize import timestamp

ADMIN_USER_ID = "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "kelpie_" + secrets.token_urlsafe(32)


def create(name: str, org: str | None = None, project: str | None = None,
           user_id: str | None = None) -> tuple[User, str]:
    """A new user and its first API key (returned in clear, once)."""
    now = db.utcnow()
    key = new_key()
    with db.write_transaction():
        # The original service answers 400 for a name that is taken; its scripts rely on it.
        if User.select().where(User.name == name).exists():
            raise ValidationError("name", f"a user named {name!r} already exists")
        user = User.create(id=user_id or str(uuid.uuid4()), name=name, org=org, project=project,
                           is_admin=False, created=now)
        ApiKey.create(key_hash=hash_key(key), user=user, created=now)
    return user, key


def issue_key(user_id: str) -> str:
    """Another API key for an existing user."""
    with db.write_transaction():
        if User.get_or_none(User.id == user_id) is None:
            raise NotFound(f"user {user_id} not found")
        key = new_key()
        ApiKey.create(key_hash=hash_key(key), user=user_id, created=db.utcnow())
    return key


def find_by_key(key: str) -> User | None:
    return (User.select().join(ApiKey).where(ApiKey.key_hash == hash_key(key)).first())


def get(user_id: str) -> User | None:
    return User.get_or_none(User.id == user_id)


def find_or_create_for_org(org: str, project: str | None) -> User:
    """The one Kelpie user that stands for a Salad organization (made on first use)."""
    user_id = f"salad:{org}"
    user = User.get_or_none(User.id == user_id)
    if user is None:
        with db.write_transaction():
            User.insert(id=user_id, name=org, org=org, project=project, is_admin=False,
                        created=db.utcnow()).on_conflict_ignore().execute()
        user = User.get_by_id(user_id)
    return user


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def webhook_secret(user_id: str) -> str | None:
    """The user's webhook signing secret, made on first use (None if the user is gone).

    The conditional update makes concurrent first uses agree on one secret.
    """
    user = User.select(User.webhook_secret).where(User.id == user_id).first()
    if user is None or user.webhook_secret:
        return user and user.webhook_secret
    User.update(webhook_secret=new_webhook_secret()).where(
        User.id == user_id, User.webhook_secret.is_null()).execute()
    user = User.select(User.webhook_secret).where(User.id == user_id).first()
    return user.webhook_secret if user else None


def rotate_webhook_secret(user_id: str) -> str:
    """Replace the signing secret; deliveries signed from now on use the new one."""
    secret = new_webhook_secret()
    if not User.update(webhook_secret=secret).where(User.id == user_id).execute():
        raise NotFound(f"user {user_id} not found")
    return secret


def delete_all_but_admin() -> int:
    with db.write_transaction():
        return User.delete().where(User.is_admin == False).execute()  # noqa: E712


def ensure_admin(admin_key: str | None) -> None:
    """Make the bootstrap administrator match KELPIE_ADMIN_KEY: only the current key works."""
    if not admin_key:
        return
    with db.database.connection_context(), db.write_transaction():
        User.insert(id=ADMIN_USER_ID, name="admin", is_admin=True,
                    created=db.utcnow()).on_conflict_ignore().execute()
        wanted = hash_key(admin_key)
        ApiKey.delete().where(ApiKey.user == ADMIN_USER_ID, ApiKey.key_hash != wanted).execute()
        ApiKey.insert(key_hash=wanted, user=ADMIN_USER_ID,
                      created=db.utcnow()).on_conflict_ignore().execute()


def to_dict(user: User) -> dict:
    return {
        "id": user.id,
        "name": user.name,
        "org": user.org,
        "project": user.project,
        "is_admin": bool(user.is_admin),
        "created": timestamp(user.created),
    }
