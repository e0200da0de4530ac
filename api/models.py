"""Peewee models: the tables the migrations create, as the code sees them.

The schema itself is owned by `api/migrations/`; a change here needs a migration there.
"""

import json

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    CompositeKey,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from api.db import database


class JSONField(TextField):
    """JSON kept as text: portable across SQLite and PostgreSQL, never queried inside."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False

    @classmethod
    def holding(cls, data: dict):
        """An instance holding `data` (field name -> Python value) as a query loads a row: as
        stored, nothing marked changed. `Model(**data)` assigns each value through its
        field's descriptor and marks it changed, which for the 40 fields of a job cost a fifth
        of the API's CPU per claim and of a 1,000-job batch."""
        instance = cls(__no_default__=True)
        instance.__data__ = data
        return instance


class User(BaseModel):
    id = CharField(primary_key=True)
    name = TextField()
    org = TextField(null=True)
    project = TextField(null=True)
    is_admin = BooleanField(default=False)
    created = DateTimeField()
    # Signs webhook deliveries (HMAC-SHA256); made on first use, rotated by the user.
    webhook_secret = TextField(null=True)

    class Meta:
        table_name = "users"


class ApiKey(BaseModel):
    # SHA-256 of the key. Keys are 32 random bytes, so a fast hash is enough: there is nothing
    # to brute-force, and a lookup by hash stays one indexed read.
    key_hash = CharField(primary_key=True)
    user = ForeignKeyField(User, column_name="user_id", on_delete="CASCADE")
    created = DateTimeField()
    # What lists, revocation and the audit trail call the key (the hash is never shown).
    id = CharField(unique=True)
    name = TextField(null=True)
    scope = CharField(default="user")  # user | worker (the admin's key takes the user's rank)
    # A worker key acts only for these container groups.
    container_group_ids = JSONField(null=True)
    expires = DateTimeField(null=True)
    last_used = DateTimeField(null=True)

    class Meta:
        table_name = "api_keys"


class Job(BaseModel):
    id = CharField(primary_key=True)
    user = ForeignKeyField(User, column_name="user_id", on_delete="CASCADE")
    # Where a Salad principal submitted it: such principals see and claim only their project's
    # jobs. NULL for jobs submitted with a Kelpie key.
    organization = TextField(null=True)
    project = TextField(null=True)
    status = CharField()
    created = DateTimeField()
    started = DateTimeField(null=True)
    completed = DateTimeField(null=True)
    canceled = DateTimeField(null=True)
    failed = DateTimeField(null=True)
    heartbeat = DateTimeField(null=True)
    # After this moment a running job may be handed to another machine (the lease of
    # api/lease.py after the last heartbeat). Kept as a column so the claim query can use an index.
    lease_expires = DateTimeField(null=True)
    num_failures = IntegerField(default=0)
    num_heartbeats = IntegerField(default=0)
    num_attempts = IntegerField(default=0)
    # Lost leases: counted when a claim takes the job over; past max_interruptions it fails.
    num_interruptions = IntegerField(default=0)
    max_interruptions = IntegerField(default=100)
    # Wall-clock limit of one attempt in seconds (None: no limit).
    timeout_s = IntegerField(null=True)
    machine_id = TextField(null=True)
    container_group_id = TextField(null=True)
    command = TextField()
    arguments = JSONField()
    environment = JSONField()
    sync = JSONField(null=True)
    input_bucket = TextField(null=True)
    input_prefix = TextField(null=True)
    checkpoint_bucket = TextField(null=True)
    checkpoint_prefix = TextField(null=True)
    output_bucket = TextField(null=True)
    output_prefix = TextField(null=True)
    webhook = TextField(null=True)
    max_failures = IntegerField()
    heartbeat_interval = IntegerField()
    compression = BooleanField(default=False)

    class Meta:
        table_name = "jobs"


class JobBan(BaseModel):
    """A machine that failed a job never gets that job again."""

    job = ForeignKeyField(Job, column_name="job_id", on_delete="CASCADE")
    machine_id = TextField()
    user_id = TextField()
    container_group_id = TextField(null=True)
    created = DateTimeField()

    class Meta:
        table_name = "job_bans"
        primary_key = CompositeKey("job", "machine_id")


class JobEvent(BaseModel):
    """One transition of a job: the history behind GET /jobs/:id/events."""

    id = AutoField()
    job = ForeignKeyField(Job, column_name="job_id", on_delete="CASCADE")
    at = DateTimeField()
    kind = CharField()
    status = CharField()
    machine_id = TextField(null=True)
    attempt = IntegerField(null=True)
    exit_code = IntegerField(null=True)
    reason = TextField(null=True)
    # Who caused it: "admin", "user:<id>", "key:<id>", "machine:<id>" or "system".
    actor = TextField(null=True)

    class Meta:
        table_name = "job_events"


class WebhookDelivery(BaseModel):
    """One status notification in the outbox, and how its delivery is going."""

    id = AutoField()
    job_id = TextField()
    user_id = TextField()
    url = TextField()
    job_status = CharField()
    # The exact bytes that are signed and sent, fixed when the notification is written.
    body = TextField()
    status = CharField()  # pending | delivered | failed
    created = DateTimeField()
    next_attempt = DateTimeField()
    attempts = IntegerField(default=0)
    last_attempt = DateTimeField(null=True)
    last_response_code = IntegerField(null=True)
    # Never written since migration 0004: the receiver's answer is not the tenant's to read.
    last_response_body = TextField(null=True)
    last_duration_ms = IntegerField(null=True)
    last_error = TextField(null=True)
    delivered = DateTimeField(null=True)
    # A sender owns the row until lease_until; its result counts only with its lease_token.
    lease_until = DateTimeField(null=True)
    lease_token = TextField(null=True)

    class Meta:
        table_name = "webhook_deliveries"


class ScalingRule(BaseModel):
    """How many replicas a container group should run for its owner's job volume, and what the
    autoscaler last saw and did."""

    container_group_id = TextField(primary_key=True)
    user = ForeignKeyField(User, column_name="user_id", on_delete="CASCADE")
    # Salad addresses a container group by organization, project and name, not by id.
    organization_name = TextField()
    project_name = TextField()
    container_group_name = TextField()
    min_replicas = IntegerField()
    max_replicas = IntegerField()
    idle_threshold_seconds = IntegerField()
    created = DateTimeField()
    updated = DateTimeField()
    last_evaluated = DateTimeField(null=True)
    last_count = IntegerField(null=True)
    last_target = IntegerField(null=True)
    last_group_status = TextField(null=True)
    last_group_replicas = IntegerField(null=True)
    last_action = TextField(null=True)
    last_error = TextField(null=True)

    class Meta:
        table_name = "scaling_rules"


class LoopLease(BaseModel):
    """Which process runs a background loop's current tick (see api/autoscale.py)."""

    name = TextField(primary_key=True)
    due = DateTimeField()
    busy_until = DateTimeField(null=True)
    holder = TextField(null=True)

    class Meta:
        table_name = "loop_leases"


class MachineReallocation(BaseModel):
    """A machine banned from too many jobs, reallocated once through Salad's API."""

    # One reallocation per machine *within a tenant's container group*: another tenant naming
    # the same machine id can neither trigger nor block it.
    user_id = TextField()
    container_group_id = TextField()
    machine_id = TextField()
    requested = DateTimeField()
    outcome = TextField()  # requested | reallocated | failed
    error = TextField(null=True)
    finished = DateTimeField(null=True)

    class Meta:
        table_name = "machine_reallocations"
        primary_key = CompositeKey("user_id", "container_group_id", "machine_id")


class IdempotencyKey(BaseModel):
    """The first answer to a tenant's Idempotency-Key on a submission (api/idempotency.py)."""

    user_id = TextField()
    # The Salad project the key was used under ("" for Kelpie keys): projects of one
    # organization share a user, and must not see each other's answers.
    project = TextField()
    idempotency_key = TextField()
    request_hash = TextField()
    status = IntegerField()
    body = TextField()
    created = DateTimeField()

    class Meta:
        table_name = "idempotency_keys"
        primary_key = CompositeKey("user_id", "project", "idempotency_key")


class SchemaMigration(BaseModel):
    version = IntegerField(primary_key=True)
    name = TextField()
    applied = DateTimeField()

    class Meta:
        table_name = "schema_migrations"
