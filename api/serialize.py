"""Jobs and events as the wire shows them: the spec's field names and order, UTC with a Z."""

from datetime import datetime

from api.jobspec import LEGACY_FIELDS
from api.models import Job, JobEvent


def timestamp(moment: datetime | str | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, str):  # SQLite hands back text for computed columns
        moment = datetime.fromisoformat(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job(job: Job) -> dict:
    body = {
        "id": job.id,
        "user_id": job.user_id,
        "status": job.status,
        "created": timestamp(job.created),
        "started": timestamp(job.started),
        "completed": timestamp(job.completed),
        "canceled": timestamp(job.canceled),
        "failed": timestamp(job.failed),
        "command": job.command,
        "arguments": job.arguments,
        "environment": job.environment,
        "sync": job.sync,
    }
    for name in LEGACY_FIELDS:
        body[name] = getattr(job, name)
    body.update({
        "webhook": job.webhook,
        "heartbeat": timestamp(job.heartbeat),
        "num_failures": job.num_failures,
        "num_heartbeats": job.num_heartbeats,
        "container_group_id": job.container_group_id,
        "machine_id": job.machine_id,
        "max_failures": job.max_failures,
        "heartbeat_interval": job.heartbeat_interval,
        "compression": bool(job.compression),
        # Ours, after the spec's fields: how many times a machine was given the job.
        "num_attempts": job.num_attempts,
        "num_interruptions": job.num_interruptions,
        "max_interruptions": job.max_interruptions,
        "timeout_s": job.timeout_s,
    })
    return body


def event(event: JobEvent) -> dict:
    return {
        "id": event.id,
        "job_id": event.job_id,
        "at": timestamp(event.at),
        "kind": event.kind,
        "status": event.status,
        "machine_id": event.machine_id,
        "attempt": event.attempt,
        "exit_code": event.exit_code,
        "reason": event.reason,
        # Who caused it: admin, user:<id>, key:<id>, machine:<id>, system (null before 0004).
        "actor": event.actor,
    }
