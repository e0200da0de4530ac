"""Validation of a submitted job definition: turns request JSON into the columns of a job,
or raises ValidationError naming the field.

Rules follow the original service: either `sync` or all six legacy bucket/prefix fields,
never both and never neither; `sync.before` entries download, `during`/`after` upload; every
prefix ends with "/". The agent's own rules judge what a sync entry names, so the API never
accepts a job the agent would refuse: `pattern` is compiled by its linear-time engine
(agent/pattern.py) and `local_path` goes through its rule (agent/paths.py: no system
directory, no climbing out of the work directory).
"""

from functools import lru_cache
from urllib.parse import urlparse

from agent.paths import local_path_problem
from agent.pattern import PatternRefused, compile_pattern
from api import buckets, egress, execve
from api.bodies import LEGACY_FIELDS, JobRequest, Sync, SyncEntry, bounds, known_fields, max_length
from api.config import Settings
from api.errors import ValidationError
from api.fields import is_storable, text

# Every name, bound and length below is read from the models in api/bodies.py, which the
# OpenAPI document is generated from: what is refused here is what the document states.
SYNC_DIRECTIONS = {"before": "download", "during": "upload", "after": "upload"}
assert set(SYNC_DIRECTIONS) == known_fields(Sync)
SYNC_ENTRY_FIELDS = known_fields(SyncEntry)
JOB_FIELDS = known_fields(JobRequest)
MAX_COMMAND_PARTS = max_length(JobRequest, "arguments")
MAX_COMMAND_LENGTH = max_length(JobRequest, "command")
MAX_ID_LENGTH = max_length(JobRequest, "container_group_id")
MAX_SYNC_ENTRIES = max_length(Sync, "before")
MAX_PREFIX_LENGTH = max_length(SyncEntry, "prefix")
MAX_LOCAL_PATH_LENGTH = max_length(SyncEntry, "local_path")
MAX_WEBHOOK_LENGTH = max_length(JobRequest, "webhook")
FAILURES = bounds(JobRequest, "max_failures")
HEARTBEAT_INTERVAL = bounds(JobRequest, "heartbeat_interval")
INTERRUPTIONS = bounds(JobRequest, "max_interruptions")
TIMEOUT_S = bounds(JobRequest, "timeout_s")


# The rules below are pure functions of one string, and the jobs of a batch name the same few
# buckets, patterns and paths: each distinct value is judged once (a batch of 1,000 jobs spent
# most of its validation compiling the same pattern a thousand times).
CACHED_VALUES = 4096


@lru_cache(maxsize=CACHED_VALUES)
def _pattern_problem(pattern: str) -> str | None:
    try:
        compile_pattern(pattern)
    except PatternRefused as error:
        return error.reason
    return None


_bucket_problem = lru_cache(maxsize=CACHED_VALUES)(buckets.problem)
_local_path_problem = lru_cache(maxsize=CACHED_VALUES)(local_path_problem)


def _integer(value, field: str, default: int, minimum: int, maximum: int) -> int:
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a number here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be an integer")
    if not minimum <= value <= maximum:
        raise ValidationError(field, f"must be between {minimum} and {maximum}")
    return value


def _prefix(value, field: str) -> str:
    prefix = text(value, field, required=False, max_length=MAX_PREFIX_LENGTH) or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return prefix


def _sync_entry(entry, field: str, expected_direction: str) -> dict:
    if not isinstance(entry, dict):
        raise ValidationError(field, "must be an object")
    unknown = set(entry) - SYNC_ENTRY_FIELDS
    if unknown:
        raise ValidationError(f"{field}.{sorted(unknown)[0]}", "is not a known field")
    direction = text(entry.get("direction"), f"{field}.direction")
    if direction != expected_direction:
        raise ValidationError(f"{field}.direction", f"must be {expected_direction!r}")
    pattern = text(entry.get("pattern"), f"{field}.pattern", required=False)
    if pattern is not None:
        problem = _pattern_problem(pattern)
        if problem:
            raise ValidationError(f"{field}.pattern", problem)
    bucket = _bucket(entry.get("bucket"), f"{field}.bucket")
    prefix = _prefix(entry.get("prefix"), f"{field}.prefix")
    local_path = text(entry.get("local_path"), f"{field}.local_path",
                      max_length=MAX_LOCAL_PATH_LENGTH)
    problem = _local_path_problem(local_path)
    if problem:
        raise ValidationError(f"{field}.local_path", problem)
    return {
        "bucket": bucket,
        "prefix": prefix,
        "local_path": local_path,
        "direction": direction,
        "pattern": pattern,
    }


def _sync(value) -> dict:
    if not isinstance(value, dict):
        raise ValidationError("sync", "must be an object with before, during and after lists")
    unknown = set(value) - set(SYNC_DIRECTIONS)
    if unknown:
        raise ValidationError(f"sync.{sorted(unknown)[0]}", "is not a known field")
    sync = {}
    for phase, direction in SYNC_DIRECTIONS.items():
        entries = value.get(phase) or []
        if not isinstance(entries, list):
            raise ValidationError(f"sync.{phase}", "must be a list")
        if len(entries) > MAX_SYNC_ENTRIES:
            raise ValidationError(f"sync.{phase}", f"must have at most {MAX_SYNC_ENTRIES} entries")
        sync[phase] = [
            _sync_entry(entry, f"sync.{phase}[{index}]", direction)
            for index, entry in enumerate(entries)
        ]
    return sync


def _bucket(value, field: str) -> str:
    name = text(value, field, max_length=buckets.MAX_LENGTH)
    problem = _bucket_problem(name)
    if problem:
        raise ValidationError(field, problem)
    return name


def _webhook(value, settings: Settings) -> str | None:
    url = text(value, "webhook", required=False, max_length=MAX_WEBHOOK_LENGTH)
    if not url:
        return None
    try:
        parsed = urlparse(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ValidationError("webhook", "must be an http or https URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError("webhook", "must be an http or https URL")
    # A destination the sender would refuse is refused now, while the user is there to see it.
    try:
        egress.check_url(url, deny_private=settings.webhook_deny_private,
                         allowed_hosts=settings.webhook_allowed_hosts)
    except egress.Refused as refusal:
        raise ValidationError("webhook", f"is refused: {refusal}") from None
    return url


def parse_job(body, settings: Settings) -> dict:
    """Validate one job definition; returns the job's columns (without id, user or times)."""
    if not isinstance(body, dict):
        raise ValidationError("", "a job must be a JSON object")
    unknown = set(body) - JOB_FIELDS
    if unknown:
        raise ValidationError(sorted(unknown)[0], "is not a known field")

    arguments = body.get("arguments")
    if arguments is None:
        arguments = []
    if not isinstance(arguments, list):
        raise ValidationError("arguments", "must be a list of strings")
    if len(arguments) > MAX_COMMAND_PARTS:
        raise ValidationError("arguments", f"must have at most {MAX_COMMAND_PARTS} entries")
    for index, argument in enumerate(arguments):
        if not isinstance(argument, str) or not is_storable(argument):
            raise ValidationError(f"arguments[{index}]", "must be a string")

    environment = body.get("environment")
    if environment is None:
        environment = {}
    if not isinstance(environment, dict):
        raise ValidationError("environment", "must be an object of string values")
    for name, value in environment.items():
        if not name or "=" in name or not is_storable(name):
            raise ValidationError(f"environment.{name}", "is not a valid variable name")
        if not isinstance(value, str) or not is_storable(value):
            raise ValidationError(f"environment.{name}", "must be a string")

    compression = body.get("compression")
    if compression is None:
        compression = False
    if not isinstance(compression, bool):
        raise ValidationError("compression", "must be true or false")

    job = {
        "command": text(body.get("command"), "command", max_length=MAX_COMMAND_LENGTH),
        "arguments": arguments,
        "environment": environment,
        "webhook": _webhook(body.get("webhook"), settings),
        "container_group_id": text(body.get("container_group_id"), "container_group_id",
                                      required=False, max_length=MAX_ID_LENGTH) or None,
        # The defaults are the running server's settings (KELPIE_DEFAULT_*); the models state
        # their built-in values.
        "max_failures": _integer(body.get("max_failures"), "max_failures",
                                 settings.default_max_failures, *FAILURES),
        "heartbeat_interval": _integer(body.get("heartbeat_interval"), "heartbeat_interval",
                                       settings.default_heartbeat_interval, *HEARTBEAT_INTERVAL),
        "max_interruptions": _integer(body.get("max_interruptions"), "max_interruptions",
                                      settings.default_max_interruptions, *INTERRUPTIONS),
        # null (or absent): no limit on how long one attempt may run.
        "timeout_s": _integer(body.get("timeout_s"), "timeout_s", None, *TIMEOUT_S),
        "compression": compression,
        "sync": None,
        **{name: None for name in LEGACY_FIELDS},
    }

    refused = execve.problem(job["command"], arguments, environment)
    if refused:
        raise ValidationError(*refused)

    legacy_given = [name for name in LEGACY_FIELDS if body.get(name) is not None]
    has_sync = body.get("sync") is not None
    if has_sync and legacy_given:
        raise ValidationError("sync", "give either sync or the legacy bucket fields, not both")
    if has_sync:
        job["sync"] = _sync(body["sync"])
    elif legacy_given:
        for name in LEGACY_FIELDS:
            if name.endswith("_prefix"):
                if body.get(name) is None:
                    raise ValidationError(name, "is required when legacy bucket fields are used")
                job[name] = _prefix(body.get(name), name)
            else:
                job[name] = _bucket(body.get(name), name)
    else:
        raise ValidationError("sync", "is required (or all six legacy bucket and prefix fields)")
    return job
