"""OpenAPI 3 component schemas for every request and response body.

Registered with sanic-ext in `api.app`; routes refer to them with `ref("Name")`. The request
bodies' schemas are generated from their pydantic models in `api.bodies`, the one place their
fields, limits and defaults are declared (the validators read the same models); the response
bodies are written here.
"""

from sanic_ext.extensions.openapi.definitions import Reference

from api import bodies
from api.bodies import LEGACY_FIELDS
from api.states import EventKind, JobStatus

DEFAULTS = bodies.DEFAULTS

TIMESTAMP = {"type": "string", "format": "date-time", "nullable": True,
             "example": "2024-04-19T18:53:31.000Z"}
STATUS = {"type": "string", "enum": [str(status) for status in JobStatus]}
NULLABLE_STRING = {"type": "string", "nullable": True}

# What the job's request shows on the wire (the request's own schema is bodies.JobRequest's).
LEGACY_RESPONSE = {name: {"type": "string", "nullable": True} for name in LEGACY_FIELDS}

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

# The limits as the request bodies state them, for the rule as it is answered.
SCALING_LIMITS = {name: bodies.openapi_schema(bodies.ScalingRuleCreate)["properties"][name]
                  for name in ("min_replicas", "max_replicas", "idle_threshold_seconds")}

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
    "Job": JOB,
    "JobList": {
        "type": "object",
        "required": ["_count", "jobs"],
        "properties": {"_count": {"type": "integer"},
                       "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}},
    },
    "WorkList": {"type": "array", "maxItems": 1, "items": {"$ref": "#/components/schemas/Job"}},
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
            "kind": {"type": "string", "enum": [str(kind) for kind in EventKind]},
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
# Every request body, generated from its model.
COMPONENTS.update(bodies.components())


def ref(name: str) -> Reference:
    if name not in COMPONENTS:
        raise KeyError(f"no schema named {name}")
    return Reference(f"#/components/schemas/{name}")
