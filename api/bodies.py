"""Every request body the API takes, declared once as a pydantic model.

A model is the one place a body's fields, limits and defaults are written. Two things are made
from it:

- the OpenAPI document's component schema (`openapi_schema`, registered by api/schemas.py), and
- the limits the validators enforce: api/jobspec.py, api/routes/users.py,
  api/routes/scaling_rules.py and api/routes/work.py (the worker protocol's reports) take field
  names, bounds, lengths, choices and defaults from here
  (`object_of`, `known_fields`, `bounds`, `min_length`, `max_length`, `choices`, `default`)
  instead of writing them again.

The validators themselves stay hand-written rather than calling `model_validate`: they report
the first bad field as `{"error", "message", "field"}` in the order and words clients already
depend on (pydantic's own messages never reach a client), and they apply the rules a JSON
schema cannot state (S3 bucket names, execve's byte limits, webhook destinations, linear-time
patterns, either `sync` or the six legacy fields), which is where a batch's validation time
goes; pydantic checking types and bounds first would add its time, not replace any.
tests/api/test_bodies.py
checks that the served document is exactly what these models produce, and that every limit
the validators enforce is one the document states.
"""

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.fields import FieldInfo

from agent.pattern import MAX_PATTERN_LENGTH, MAX_PROGRAM_SIZE
from api import buckets, execve
from api.config import Settings
from api.errors import ValidationError
from api.fields import MAX_TEXT_LENGTH
from api.principal import USER, WORKER

# The defaults an operator can change (KELPIE_DEFAULT_*) are documented at their built-in value;
# the validator applies the running server's setting.
DEFAULTS = Settings()

MAX_COMMAND_PARTS = 1000
MAX_COMMAND_LENGTH = 4096
MAX_ID_LENGTH = 255  # container group ids, user and key names, Salad org and project names
MAX_SYNC_ENTRIES = 100
MAX_TIMEOUT_S = 366 * 86400  # a year: jobs run for weeks, never for ever by accident
MAX_KEY_LIFETIME_S = 10 * 365 * 24 * 3600  # the longest a key may be issued for (ten years)
MAX_WORKER_KEY_GROUPS = 100


class Body(BaseModel):
    # Unknown fields are refused ("is not a known field"); the schema says additionalProperties
    # false. Strict: JSON true is not the integer 1 here, as the validators have it.
    model_config = ConfigDict(extra="forbid", strict=True)


Bucket = Annotated[str, Field(
    min_length=buckets.MIN_LENGTH, max_length=buckets.MAX_LENGTH, pattern=buckets.PATTERN,
    description="An S3 bucket name: lowercase letters, digits, dots and hyphens.")]
Prefix = Annotated[str, Field(max_length=MAX_TEXT_LENGTH,
                              description="A trailing / is added when missing.")]
# Text that must not be blank: the validators refuse "" and "   " alike ("must not be empty").
NOT_BLANK = r"\S"
Name = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NOT_BLANK)]


class SyncEntry(Body):
    bucket: Bucket
    prefix: Prefix | None = None
    local_path: str = Field(
        min_length=1, max_length=MAX_TEXT_LENGTH, pattern=NOT_BLANK,
        description="Absolute, or relative to the agent's work directory. Refused: relative "
        "paths that climb out of it (../x), the system's directories (/etc /usr /bin /sbin "
        "/lib* /proc /sys /dev /boot and below; /, /root, /home, /var, /tmp and ~ themselves).")
    direction: Literal["download", "upload"]
    pattern: str | None = Field(
        None, max_length=MAX_PATTERN_LENGTH,
        description="Regular expression (Python syntax) searched in the path relative to "
        "local_path, in linear time. Refused: backreferences, lookaround, conditionals, atomic "
        "groups, possessive repeats, and more than "
        f"{MAX_PROGRAM_SIZE} states once counted repeats are expanded.")


SyncEntries = Annotated[list[SyncEntry], Field(max_length=MAX_SYNC_ENTRIES)]


class Sync(Body):
    # A phase may be left out or null: it has no entries.
    before: SyncEntries | None = Field(
        default_factory=list,
        description="Downloaded before the command starts (direction download).")
    during: SyncEntries | None = Field(
        default_factory=list,
        description="Uploaded as files appear while it runs (direction upload).")
    after: SyncEntries | None = Field(
        default_factory=list,
        description="Uploaded after it exits 0, before completion (direction upload).")


class JobRequest(Body):
    """Either `sync`, or all six legacy bucket/prefix fields."""

    command: str = Field(min_length=1, max_length=MAX_COMMAND_LENGTH, pattern=NOT_BLANK)
    # The fields below may be left out or null, which means their default.
    arguments: list[str] | None = Field(
        default_factory=list, max_length=MAX_COMMAND_PARTS,
        description=f"Each at most {execve.MAX_STRING_BYTES} bytes; command, arguments and "
        f"environment together at most {execve.MAX_TOTAL_BYTES} bytes (what execve accepts, "
        "with room for the node's own environment).")
    environment: dict[str, str] | None = Field(default_factory=dict)
    sync: Sync | None = None
    input_bucket: Bucket | None = None
    input_prefix: Prefix | None = None
    checkpoint_bucket: Bucket | None = None
    checkpoint_prefix: Prefix | None = None
    output_bucket: Bucket | None = None
    output_prefix: Prefix | None = None
    webhook: str | None = Field(
        None, max_length=MAX_TEXT_LENGTH, json_schema_extra={"format": "uri"},
        description="http or https. Refused with 400: link-local and cloud metadata "
        "addresses; private ones with KELPIE_WEBHOOK_DENY_PRIVATE; hosts outside "
        "KELPIE_WEBHOOK_ALLOWED_HOSTS when that is set.")
    container_group_id: str | None = Field(None, max_length=MAX_ID_LENGTH)
    max_failures: int | None = Field(DEFAULTS.default_max_failures, ge=1, le=1000)
    heartbeat_interval: int | None = Field(DEFAULTS.default_heartbeat_interval, ge=1, le=86400,
                                           description="Seconds between the worker's heartbeats.")
    compression: bool | None = Field(False, description="gzip uploads (stored with a .gz suffix).")
    max_interruptions: int | None = Field(
        DEFAULTS.default_max_interruptions, ge=0, le=1_000_000,
        description="Lost leases (a machine stopped heartbeating) the job survives; one more "
        "and it ends failed with reason 'too many interruptions'. Default "
        "KELPIE_DEFAULT_MAX_INTERRUPTIONS.")
    timeout_s: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_S,
        description="Wall-clock limit of one attempt in seconds (null: none). An attempt past "
        "it is stopped and fails with reason 'timed out', which counts toward max_failures.")


LEGACY_FIELDS = (
    "input_bucket", "input_prefix",
    "checkpoint_bucket", "checkpoint_prefix",
    "output_bucket", "output_prefix",
)

JobBatchRequest = TypeAdapter(Annotated[
    list[JobRequest], Field(min_length=1, max_length=DEFAULTS.max_batch_size)])


# A scaling rule's numbers: field -> (minimum, maximum), as the original validates them.
RULE_LIMITS = {
    "min_replicas": (0, 500),
    "max_replicas": (0, 500),
    "idle_threshold_seconds": (0, 3600),
}


def _rule_limit(name: str, description: str | None = None, *, required: bool) -> Any:
    low, high = RULE_LIMITS[name]
    return Field(... if required else None, ge=low, le=high, description=description)


RULE_DESCRIPTIONS = {"max_replicas": "At least min_replicas.",
                     "idle_threshold_seconds": "Jobs finished this recently still count."}
# The original's clients name the rule's Salad location in the body; Kelpie takes it from the
# credential, so a body may repeat it but never point elsewhere.
LOCATION_DESCRIPTION = ("The original's field: optional, and when given it must be the "
                        "credential's Salad location (403 otherwise).")


class ScalingRuleCreate(Body):
    container_group_id: Name
    min_replicas: int = _rule_limit("min_replicas", required=True)
    max_replicas: int = _rule_limit("max_replicas", RULE_DESCRIPTIONS["max_replicas"],
                                    required=True)
    idle_threshold_seconds: int = _rule_limit(
        "idle_threshold_seconds", RULE_DESCRIPTIONS["idle_threshold_seconds"], required=True)
    # Optional but not nullable: null is not the credential's location. (A field typed `int` or
    # `str` with the default None is how pydantic writes "may be absent, never null".)
    org_name: str = Field(None, description=LOCATION_DESCRIPTION)
    organization_name: str = Field(None, description=LOCATION_DESCRIPTION)
    project_name: str = Field(None, description=LOCATION_DESCRIPTION)


class ScalingRuleUpdate(Body):
    container_group_id: str = Field(
        None, description="The original's clients send the whole rule back: the rule's own id "
        "is accepted, any other is refused.")
    # Each may be left out; none may be null.
    min_replicas: int = _rule_limit("min_replicas", required=False)
    max_replicas: int = _rule_limit("max_replicas", RULE_DESCRIPTIONS["max_replicas"],
                                    required=False)
    idle_threshold_seconds: int = _rule_limit(
        "idle_threshold_seconds", RULE_DESCRIPTIONS["idle_threshold_seconds"], required=False)


class UserCreate(Body):
    """`name`, or the original service's `username`."""

    name: Name | None = None
    username: Name | None = None
    org: str | None = Field(None, max_length=MAX_ID_LENGTH)
    project: str | None = Field(None, max_length=MAX_ID_LENGTH)


class TokenCreate(Body):
    name: str | None = Field(None, max_length=MAX_ID_LENGTH)
    scope: Literal[USER, WORKER] = USER
    container_group_ids: list[Name] | None = Field(
        None, min_length=1, max_length=MAX_WORKER_KEY_GROUPS,
        json_schema_extra={"uniqueItems": True},
        description="Required for, and only for, worker keys.")
    expires_in_s: int | None = Field(None, ge=1, le=MAX_KEY_LIFETIME_S)
    expires_at: str | None = Field(
        None, json_schema_extra={"format": "date-time", "example": "2024-04-19T18:53:31.000Z"},
        description="ISO 8601 with a time zone (Z for UTC), in the future. Give expires_in_s "
        "or expires_at, not both.")
    org_name: str | None = Field(None, description="The original's field; ignored.")
    project_name: str | None = Field(None, description="The original's field; ignored.")


# --- The worker protocol's reports (api/routes/work.py) -----------------------------------

MAX_REASON_LENGTH = 100_000
REASON_KEPT_LENGTH = 2000  # what is stored of a failure's reason; the rest is dropped
INT32 = (-(2**31), 2**31 - 1)  # an exit code as every platform's wait status holds it


class WorkerReport(Body):
    """A heartbeat. Every report names the machine and the container group it runs for."""

    # The original worker sends these two fields and, over the years, others; a report's
    # unknown fields have always been ignored, so the document says additionalProperties true.
    model_config = ConfigDict(extra="allow", strict=True)

    machine_id: Name
    container_group_id: str | None = Field(None, max_length=MAX_ID_LENGTH)


class CompletionReport(WorkerReport):
    exit_code: Literal[0] | None = Field(
        None, description="Optional (the original sends none); a completed job exited 0.")


class FailureReport(WorkerReport):
    exit_code: int | None = Field(None, ge=INT32[0], le=INT32[1])
    reason: str | None = Field(
        None, max_length=MAX_REASON_LENGTH,
        description=f"Only its first {REASON_KEPT_LENGTH} characters are kept.")
    kind: Literal["job", "node"] | None = Field(
        "job", description="job: the command failed (charged to the job). node: this machine "
        "could not run it (storage, disk, work directory): the job returns to pending "
        "uncharged and the machine is banned from it. Absent or null: job.")


# Component name → the model (or adapter) it is generated from.
MODELS: dict[str, type[Body] | TypeAdapter] = {
    "SyncEntry": SyncEntry,
    "Sync": Sync,
    "JobRequest": JobRequest,
    "JobBatchRequest": JobBatchRequest,
    "ScalingRuleCreate": ScalingRuleCreate,
    "ScalingRuleUpdate": ScalingRuleUpdate,
    "UserCreate": UserCreate,
    "TokenCreate": TokenCreate,
    "WorkerReport": WorkerReport,
    "CompletionReport": CompletionReport,
    "FailureReport": FailureReport,
}


# --- What the validators read --------------------------------------------------------------

def object_of(body, model: type[Body], *, absent_is_empty: bool = False) -> dict:
    """`body` if it is a JSON object with only the model's fields (any fields, for a model that
    allows extra ones); else the 400 naming the first unknown field (sorted, so the same body
    always names the same one)."""
    if body is None and absent_is_empty:
        return {}
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    if model.model_config.get("extra") != "forbid":
        return body
    unknown = set(body) - model.model_fields.keys()
    if unknown:
        raise ValidationError(sorted(unknown)[0], "is not a known field")
    return body


def known_fields(model: type[Body]) -> frozenset[str]:
    return frozenset(model.model_fields)


def _metadata(annotation) -> list:
    """The constraints written on a type: `Annotated[...]`'s, also inside `X | None` (never
    those of a list's items, which are not the list's)."""
    found = []
    for item in getattr(annotation, "__metadata__", ()):
        found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    if get_origin(annotation) in (Union, UnionType):
        for argument in get_args(annotation):
            found.extend(_metadata(argument))
    return found


def _constraint(model: type[Body], name: str, attribute: str):
    """One constraint of a field, on the field itself or on its type (an alias like Prefix)."""
    info: FieldInfo = model.model_fields[name]
    for item in [*info.metadata, *_metadata(info.annotation)]:
        value = getattr(item, attribute, None)
        if value is not None:
            return value
    raise LookupError(f"{model.__name__}.{name} declares no {attribute}")


def bounds(model: type[Body], name: str) -> tuple[int, int]:
    return _constraint(model, name, "ge"), _constraint(model, name, "le")


def min_length(model: type[Body], name: str) -> int:
    return _constraint(model, name, "min_length")


def max_length(model: type[Body], name: str) -> int:
    """A string field's longest value, or a list field's most items."""
    return _constraint(model, name, "max_length")


def default(model: type[Body], name: str):
    return model.model_fields[name].get_default(call_default_factory=True)


def choices(model: type[Body], name: str) -> tuple:
    """The values a `Literal` field allows (null aside, for `Literal[...] | None`)."""
    annotation = model.model_fields[name].annotation
    if get_origin(annotation) in (Union, UnionType):
        return tuple(value for argument in get_args(annotation)
                     if get_origin(argument) is Literal for value in get_args(argument))
    return get_args(annotation)


# --- OpenAPI 3.0 -----------------------------------------------------------------------------

REF_TEMPLATE = "#/components/schemas/{model}"


def _openapi_30(schema):
    """pydantic writes JSON Schema 2020-12; the document is OpenAPI 3.0.3, which has `nullable`
    instead of a null type, no `const` (an enum of one), and ignores the siblings of a `$ref`;
    a nullable enum lists null among its values, as 3.0.3 asks. Titles are dropped: every
    schema is already named by its component or property."""
    if isinstance(schema, list):
        return [_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _openapi_30(value) for key, value in schema.items() if key != "title"}
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    variants = schema.get("anyOf")
    if variants and {"type": "null"} in variants:
        others = [variant for variant in variants if variant != {"type": "null"}]
        if len(others) == 1:
            del schema["anyOf"]
            [other] = others
            if "$ref" in other:
                other = {"allOf": [other]}
            schema = {**other, **schema, "nullable": True}
    if schema.get("default", ...) is None and not schema.get("nullable"):
        schema.pop("default")
    if schema.get("nullable") and None not in schema.get("enum", [None]):
        schema["enum"] = [*schema["enum"], None]
    return schema


def openapi_schema(model: type[Body] | TypeAdapter) -> dict:
    """The component schema of one body, in OpenAPI 3.0 form, nested models as `$ref`s."""
    if isinstance(model, TypeAdapter):
        schema = model.json_schema(ref_template=REF_TEMPLATE)
    else:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    schema.pop("$defs", None)  # each nested model is a component of its own (MODELS)
    return _openapi_30(schema)


def components() -> dict[str, dict]:
    return {name: openapi_schema(model) for name, model in MODELS.items()}
