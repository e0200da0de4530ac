"""Who is calling, as every route sees it: built once per request by api/auth.py."""

from dataclasses import dataclass, field

ADMIN = "admin"
USER = "user"
WORKER = "worker"
SCOPES = (ADMIN, USER, WORKER)


@dataclass(frozen=True)
class Principal:
    """A caller and the boundary it acts within.

    `scope` decides which routes it may call (api/scopes.py). `user_id` is the tenant: every job,
    rule and secret query is confined to it, except for the administrator. A Salad principal is
    confined further to the organization and project its credential was checked for, and a
    worker to the machine and container groups its credential is bound to.
    """

    user_id: str
    scope: str = USER
    name: str = ""
    # The Kelpie API key used (None for Salad credentials): lists, revocation, audit.
    key_id: str | None = None
    # Set for Salad principals: the organization and project the credential was checked for.
    organization: str | None = None
    project: str | None = None
    # Set when the credential names one machine (a Salad workload token).
    machine_id: str | None = None
    # The container groups a worker credential may act for (None: any of the tenant's).
    container_group_ids: tuple[str, ...] | None = None
    # The hash of the Kelpie key used: the worker protocol's hot statements check that the key
    # still exists in the same statement (api/sql.py), so a cached principal is never trusted
    # past its key's revocation.
    key_hash: str | None = field(default=None, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.scope == ADMIN

    @property
    def container_group_id(self) -> str | None:
        """The one container group a workload token is bound to (None otherwise)."""
        if self.machine_id is not None and self.container_group_ids:
            return self.container_group_ids[0]
        return None

    @property
    def actor(self) -> str:
        """How the audit trail (job_events.actor) names this caller."""
        if self.is_admin:
            return "admin"
        if self.machine_id is not None:
            return f"machine:{self.machine_id}"
        if self.key_id is not None:
            return f"key:{self.key_id}"
        return f"user:{self.user_id}"
