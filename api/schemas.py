"""OpenAPI 3 component schemas for every request and response body.

Registered with sanic-ext in `api.app`; routes refer to them with `ref("Name")`. Validation
itself is done by `api.jobspec` (to name the failing field in the message); these schemas
describe the same rules for clients and for schemathesis.
"""

from sanic_ext.extensions.openapi.definitions import Reference

from agent.pattern import MAX_PATTERN_LENGTH, MAX_PROGRAM_SIZE
from api import autoscale, buckets, execve
from api.config import Settings
from api.fields import MAX_TEXT_LENGTH
from api.jobspec import (
    MAX_COMMAND_LENGTH,
    MAX_COMMAND_PARTS,
    MAX_FAILURES_LIMIT,
    MAX_HEARTBEAT_INTERVAL,
    MAX_ID_LENGTH,
    MAX_INTERRUPTIONS_LIMIT,
    MAX_SYNC_ENTRIES,
    MAX_TIMEOUT_S,
)

# The limits below are the ones api/jobspec.py enforces (tests/api/test_openapi_limits.py
# compares them); the settings' defaults where an operator can change them.
DEFAULTS = Settings()
BUCKET = {"type": "string", "minLength": buckets.MIN_LENGTH, "maxLength": buckets.MAX_LENGTH,
          "pattern": buckets.PATTERN,
          "description": "An S3 bucket name: lowercase letters, digits, dots and hyphens."}

TIMESTAMP = {"type": "string", "format": "date-time", "nullable": True,
             "example": "2024-04-19T18:53:31.000Z"}
STATUS = {"type": "string", "enum": ["pending", "running", "completed", "canceled", "failed"]}
NULLABLE_STRING = {"type": "string", "nullable": True}

SYNC_ENTRY = {
    "type": "object",
    "required": ["bucket", "local_path", "direction"],
    "properties": {
        "bucket": BUCKET,
        "prefix": {"type": "string", "maxLength": MAX_TEXT_LENGTH,
                   "description": "A trailing / is added when missing."},
        "local_path": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH,
                       "description": "Absolute, or relative to the agent's work directory. "
                       "Refused: relative paths that climb out of it (../x), the system's "
                       "directories (/etc /usr /bin /sbin /lib* /proc /sys /dev /boot and below; "
                       "/, /root, /home, /var, /tmp and ~ themselves)."},
        "direction": {"type": "string", "enum": ["download", "upload"]},
        "pattern": {"type": "string", "nullable": True, "maxLength": MAX_PATTERN_LENGTH,
                    "description": "Regular expression (Python syntax) searched in the path "
                    "relative to local_path, in linear time. Refused: backreferences, "
                    "lookaround, conditionals, atomic groups, possessive repeats, and more than "
                    f"{MAX_PROGRAM_SIZE} states once counted repeats are expanded."},
    },
    "additionalProperties": False,
}

SYNC = {
    "type": "object",
    "properties": {
        "before": {"type": "array", "items": {"$ref": "#/components/schemas/SyncEntry"},
                   "maxItems": MAX_SYNC_ENTRIES,
                   "description": "Downloaded before the command starts (direction download)."},
        "during": {"type": "array", "items": {"$ref": "#/components/schemas/SyncEntry"},
                   "maxItems": MAX_SYNC_ENTRIES,
                   "description": "Uploaded as files appear while it runs (direction upload)."},
        "after": {"type": "array", "items": {"$ref": "#/components/schemas/SyncEntry"},
                  "maxItems": MAX_SYNC_ENTRIES,
                  "description": "Uploaded after it exits 0, before completion (direction upload)."},
    },
    "additionalProperties": False,
}

LEGACY_PROPERTIES = {
    name: ({**BUCKET, "nullable": True} if name.endswith("_bucket")
           else {"type": "string", "nullable": True, "maxLength": MAX_TEXT_LENGTH})
    for name in ("input_bucket", "input_prefix", "checkpoint_bucket", "checkpoint_prefix",
                 "output_bucket", "output_prefix")
}
# What the job's request shows on the wire; LEGACY_PROPERTIES above is for requests.
LEGACY_RESPONSE = {name: {"type": "string", "nullable": True} for name in LEGACY_PROPERTIES}

JOB_REQUEST = {
    "type": "object",
    "description": "Either `sync`, or all six legacy bucket/prefix fields.",
    "required": ["command"],
    "properties": {
        "command": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND_LENGTH},
        "arguments": {"type": "array", "items": {"type": "string"},
                      "maxItems": MAX_COMMAND_PARTS,
                      "description": "Each at most "
                      f"{execve.MAX_STRING_BYTES} bytes; command, arguments and environment "
                      f"together at most {execve.MAX_TOTAL_BYTES} bytes (what execve accepts, "
                      "with room for the node's own environment)."},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "sync": {"allOf": [{"$ref": "#/components/schemas/Sync"}], "nullable": True},
        **LEGACY_PROPERTIES,
        "webhook": {"type": "string", "format": "uri", "nullable": True,
                    "maxLength": MAX_TEXT_LENGTH,
                    "description": "http or https. Refused with 400: link-local and cloud "
                    "metadata addresses; private ones with KELPIE_WEBHOOK_DENY_PRIVATE; hosts "
                    "outside KELPIE_WEBHOOK_ALLOWED_HOSTS when that is set."},
        "container_group_id": {"type": "string", "nullable": True, "maxLength": MAX_ID_LENGTH},
        "max_failures": {"type": "integer", "minimum": 1, "maximum": MAX_FAILURES_LIMIT,
                         "default": DEFAULTS.default_max_failures},
        "heartbeat_interval": {"type": "integer", "minimum": 1,
                               "maximum": MAX_HEARTBEAT_INTERVAL,
                               "default": DEFAULTS.default_heartbeat_interval,
                               "description": "Seconds between the worker's heartbeats."},
        "compression": {"type": "boolean", "default": False,
                        "description": "gzip uploads (stored with a .gz suffix)."},
        "max_interruptions": {"type": "integer", "minimum": 0,
                              "maximum": MAX_INTERRUPTIONS_LIMIT,
                              "default": DEFAULTS.default_max_interruptions,
                              "description": "Lost leases (a machine stopped heartbeating) the "
                              "job survives; one more and it ends failed with reason "
                              "'too many interruptions'. Default KELPIE_DEFAULT_MAX_INTERRUPTIONS."},
        "timeout_s": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S,
                      "nullable": True, "default": None,
                      "description": "Wall-clock limit of one attempt in seconds (null: none). "
                      "An attempt past it is stopped and fails with reason 'timed out', which "
                      "counts toward max_failures."},
    },
    "additionalProperties": False,
}

JOB = {
    "type": "object",
    "required": ["id", "user_id", "status", "created", "command", "arguments", "environment"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "user_id": {"type": "string"},
        "status": STATUS,
        "created": TIMESTAMP,
        "started": TIMESTAMP,
        "completed": TIMESTAMP,
        "canceled": TIMESTAMP,
        "failed": TIMESTAMP,
        "command": {"type": "string"},
        "arguments": {"type": "array", "items": {"type": "string"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "sync": {"allOf": [{"$ref": "#/components/schemas/Sync"}], "nullable": True},
        **LEGACY_RESPONSE,
        "webhook": NULLABLE_STRING,
        "heartbeat": TIMESTAMP,
        "num_failures": {"type": "integer"},
        "num_heartbeats": {"type": "integer"},
        "container_group_id": NULLABLE_STRING,
        "machine_id": NULLABLE_STRING,
        "max_failures": {"type": "integer"},
        "heartbeat_interval": {"type": "integer"},
        "compression": {"type": "boolean"},
        "num_attempts": {"type": "integer", "description": "Times a machine was given the job."},
        "num_interruptions": {"type": "integer",
                              "description": "Leases lost (the holder stopped heartbeating)."},
        "max_interruptions": {"type": "integer"},
        "timeout_s": {"type": "integer", "nullable": True},
    },
}

SCALING_LIMITS = {
    name: {"type": "integer", "minimum": low, "maximum": high,
           **({"description": description} if description else {})}
    for (name, (low, high)), description in zip(autoscale.RULE_LIMITS.items(), (
        None, "At least min_replicas.", "Jobs finished this recently still count."), strict=True)
}

SCALING_RULE = {
    "type": "object",
    "required": ["container_group_id", "min_replicas", "max_replicas", "idle_threshold_seconds"],
    "properties": {
        "container_group_id": {"type": "string"},
        "user_id": {"type": "string"},
        "organization_name": {"type": "string"},
        "project_name": {"type": "string"},
        "container_group_name": {"type": "string"},
        **SCALING_LIMITS,
        "created": TIMESTAMP,
        "updated": TIMESTAMP,
        "last_evaluation": {
            "type": "object", "nullable": True,
            "description": "The autoscaler's last look at this group (null before the first).",
            "properties": {
                "at": TIMESTAMP,
                "count": {"type": "integer", "description": "Pending, running and recently "
                                                            "finished jobs."},
                "target": {"type": "integer", "description": "count clamped to the limits."},
                "group_status": NULLABLE_STRING,
                "group_replicas": {"type": "integer", "nullable": True},
                "action": {"type": "string", "nullable": True,
                           "description": "What was done: none, stopped, started, replicas a -> b."},
                "error": NULLABLE_STRING,
            },
        },
    },
}

COMPONENTS = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string"}, "index": {"type": "integer"}},
    },
    "Message": {"type": "object", "required": ["message"],
                "properties": {"message": {"type": "string"}}},
    "Count": {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}},
    "SyncEntry": SYNC_ENTRY,
    "Sync": SYNC,
    "JobRequest": JOB_REQUEST,
    "JobBatchRequest": {"type": "array", "minItems": 1, "maxItems": DEFAULTS.max_batch_size,
                        "items": {"$ref": "#/components/schemas/JobRequest"}},
    "Job": JOB,
    "JobList": {
        "type": "object",
        "required": ["_count", "jobs"],
        "properties": {"_count": {"type": "integer"},
                       "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}},
    },
    "WorkList": {"type": "array", "maxItems": 1, "items": {"$ref": "#/components/schemas/Job"}},
    "WorkerReport": {
        "type": "object",
        "required": ["machine_id"],
        "properties": {"machine_id": {"type": "string", "minLength": 1},
                       "container_group_id": NULLABLE_STRING},
    },
    "FleetMachines": {
        "type": "object",
        "required": ["machines"],
        "properties": {"machines": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "machine_id": {"type": "string"},
                "container_group_id": NULLABLE_STRING,
                "current_job_id": {"type": "string", "nullable": True,
                                   "description": "The job it runs now (null: idle)."},
                "last_heartbeat": TIMESTAMP,
                "last_seen": TIMESTAMP,
                "bans": {"type": "integer", "description": "Jobs this machine is banned from."},
            },
        }}},
    },
    "FleetActivity": {
        "type": "object",
        "required": ["hours", "counts"],
        "properties": {
            "hours": {"type": "array", "items": TIMESTAMP, "minItems": 24, "maxItems": 24,
                      "description": "The start of each of the last 24 hours, oldest first."},
            "counts": {"type": "object", "description": "Per status, how many jobs entered it "
                       "in each of those hours.",
                       "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
        },
    },
    "CompletionReport": {
        "type": "object",
        "required": ["machine_id"],
        "properties": {"machine_id": {"type": "string", "minLength": 1},
                       "container_group_id": NULLABLE_STRING,
                       "exit_code": {"type": "integer", "nullable": True, "enum": [0, None],
                                     "description": "Optional; a completed job exited 0."}},
    },
    "FailureReport": {
        "type": "object",
        "required": ["machine_id"],
        "properties": {"machine_id": {"type": "string", "minLength": 1},
                       "container_group_id": NULLABLE_STRING,
                       "exit_code": {"type": "integer", "nullable": True},
                       "reason": NULLABLE_STRING,
                       "kind": {"type": "string", "enum": ["job", "node"], "default": "job",
                                "description": "job: the command failed (charged to the job). "
                                "node: this machine could not run it (storage, disk, work "
                                "directory): the job returns to pending uncharged and the "
                                "machine is banned from it."}},
    },
    "ReportAnswer": {
        "type": "object", "required": ["message"],
        "properties": {"message": {"type": "string"}, "status": STATUS,
                       "recorded": {"type": "boolean",
                                    "description": "false: a late or repeated report; nothing "
                                    "was changed."}},
    },
    "HeartbeatResponse": {"type": "object", "required": ["status"],
                          "properties": {"status": STATUS}},
    "JobEvent": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"}, "job_id": {"type": "string"}, "at": TIMESTAMP,
            "kind": {"type": "string", "enum": [
                "created", "assigned", "heartbeat_lost", "attempt_failed", "requeued", "failed",
                "completed", "canceled", "purged"]},
            "status": STATUS, "machine_id": NULLABLE_STRING,
            "attempt": {"type": "integer", "nullable": True},
            "exit_code": {"type": "integer", "nullable": True}, "reason": NULLABLE_STRING,
            "actor": {**NULLABLE_STRING, "description": "Who caused it: admin, user:<id>, "
                      "key:<id>, machine:<id> or system."},
        },
    },
    "JobEventList": {"type": "object", "required": ["events"],
                     "properties": {"events": {"type": "array",
                                               "items": {"$ref": "#/components/schemas/JobEvent"}}}},
    "UserCreate": {
        "type": "object",
        "description": "`name`, or the original service's `username`.",
        "properties": {"name": {"type": "string", "minLength": 1},
                       "username": {"type": "string", "minLength": 1},
                       "org": NULLABLE_STRING, "project": NULLABLE_STRING},
        "additionalProperties": False,
    },
    "User": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                       "org": NULLABLE_STRING, "project": NULLABLE_STRING,
                       "is_admin": {"type": "boolean"}, "created": TIMESTAMP},
    },
    "UserWithToken": {
        "allOf": [{"$ref": "#/components/schemas/User"},
                  {"type": "object", "required": ["token"],
                   "properties": {"token": {"type": "string",
                                            "description": "Shown once; store it now."}}}],
    },
    "TokenCreate": {
        "type": "object",
        "properties": {
            "name": NULLABLE_STRING,
            "scope": {"type": "string", "enum": ["user", "worker"], "default": "user"},
            "container_group_ids": {"type": "array", "items": {"type": "string"},
                                    "description": "Required for, and only for, worker keys."},
            "expires_in_s": {"type": "integer", "minimum": 1},
            "expires_at": TIMESTAMP,
            "org_name": {"type": "string", "description": "The original's field; ignored."},
            "project_name": {"type": "string", "description": "The original's field; ignored."},
        },
        "additionalProperties": False,
    },
    "TokenInfo": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "name": NULLABLE_STRING,
                       "scope": {"type": "string", "enum": ["user", "worker"]},
                       "container_group_ids": {"type": "array", "nullable": True,
                                               "items": {"type": "string"}},
                       "created": TIMESTAMP, "expires_at": TIMESTAMP, "last_used": TIMESTAMP},
    },
    "Token": {"allOf": [{"$ref": "#/components/schemas/TokenInfo"},
                        {"type": "object", "required": ["token"],
                         "properties": {"token": {"type": "string",
                                                  "description": "Shown once; store it now."}}}]},
    "TokenList": {"type": "object", "required": ["_count", "tokens"],
                  "properties": {"_count": {"type": "integer"},
                                 "tokens": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/TokenInfo"}}}},
    "ScalingRuleCreate": {
        "type": "object",
        "required": ["container_group_id", "min_replicas", "max_replicas",
                     "idle_threshold_seconds"],
        "properties": {"container_group_id": {"type": "string", "minLength": 1},
                       **SCALING_LIMITS},
        "additionalProperties": False,
    },
    "ScalingRuleUpdate": {"type": "object", "properties": SCALING_LIMITS,
                          "additionalProperties": False},
    "ScalingRule": SCALING_RULE,
    "ScalingRuleList": {"type": "object", "required": ["rules"],
                        "properties": {"rules": {"type": "array", "items": {
                            "$ref": "#/components/schemas/ScalingRule"}}}},
    "Health": {"type": "object", "properties": {"status": {"type": "string"},
                                                "database": {"type": "string"}}},
}


# Status webhooks (api/webhooks.py, api/routes/webhooks.py).
WEBHOOK_COMPONENTS = {
    "WebhookBody": {
        "type": "object",
        "description": "What is POSTed to a job's webhook URL, signed in X-Kelpie-Signature: "
                       "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\"> with your "
                       "webhook secret. X-Kelpie-Delivery is the same on every retry.",
        "required": ["status", "job_id", "machine_id", "container_group_id", "attempt",
                     "timestamp"],
        "properties": {
            "status": {"type": "string", "enum": ["running", "completed", "failed", "canceled"]},
            "job_id": {"type": "string"},
            "machine_id": NULLABLE_STRING,
            "container_group_id": NULLABLE_STRING,
            "attempt": {"type": "integer", "description": "The job's attempt number (1 = first run)."},
            "timestamp": {**TIMESTAMP, "nullable": False,
                          "description": "When the job changed status."},
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "description": "Sent as X-Kelpie-Delivery."},
            "job_id": {"type": "string"},
            "job_status": {"type": "string", "enum": ["running", "completed", "failed", "canceled"]},
            "url": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"],
                       "description": "failed: given up (too old, or the destination is refused)."},
            "attempts": {"type": "integer"},
            "created": TIMESTAMP,
            "last_attempt": TIMESTAMP,
            "last_response_code": {"type": "integer", "nullable": True},
            "last_response_body": {"type": "string", "nullable": True,
                                   "description": "Always null: the receiver's answer is never "
                                                  "stored or shown."},
            "last_duration_ms": {"type": "integer", "nullable": True},
            "last_error": {**NULLABLE_STRING,
                           "description": "HTTP <code>, the network error's class, or why the "
                                          "destination was refused."},
            "next_retry": {**TIMESTAMP, "description": "Null unless pending."},
            "delivered": TIMESTAMP,
            "body": {"$ref": "#/components/schemas/WebhookBody"},
        },
    },
    "WebhookDeliveryList": {
        "type": "object", "required": ["deliveries"],
        "properties": {"deliveries": {"type": "array",
                                      "items": {"$ref": "#/components/schemas/WebhookDelivery"}}},
    },
    "WebhookSecret": {"type": "object", "required": ["secret"],
                      "properties": {"secret": {"type": "string"}}},
}
COMPONENTS.update(WEBHOOK_COMPONENTS)


def ref(name: str) -> Reference:
    if name not in COMPONENTS:
        raise KeyError(f"no schema named {name}")
    return Reference(f"#/components/schemas/{name}")
