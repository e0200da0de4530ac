"""What the dashboard's fleet page shows: the machines seen lately and the job activity of the
last day, both read from the job tables (the API keeps no registry of machines of its own)."""

from datetime import timedelta

from peewee import fn

from api import db
from api.models import Job, JobBan, JobEvent
from api.principal import Principal
from api.queue import RUNNING, STATUSES
from api.serialize import timestamp
from api.states import EventKind

MACHINE_WINDOW = timedelta(hours=1)
ACTIVITY_WINDOW = timedelta(hours=24)


def _own_jobs(query, principal: Principal):
    return query if principal.is_admin else query.where(Job.user == principal.user_id)


def machines(principal: Principal) -> list[dict]:
    """Machines that claimed, reported or heartbeated one of the caller's jobs in the last
    hour, newest first: group, current job, last sign of life, how many jobs ban them."""
    since = db.utcnow() - MACHINE_WINDOW
    seen: dict[str, dict] = {}

    def note(machine_id, group, at):
        entry = seen.setdefault(machine_id, {"machine_id": machine_id, "container_group_id": group,
                                             "last_seen": at, "current_job_id": None,
                                             "last_heartbeat": None, "bans": 0})
        if at > entry["last_seen"]:
            entry["last_seen"] = at
        entry["container_group_id"] = entry["container_group_id"] or group

    # Heartbeats write no event, so a long attempt is seen through its job row instead. The
    # database reduces the hour's events to one row per machine and group.
    last_event = fn.MAX(JobEvent.at)
    events = (_own_jobs(JobEvent.select(JobEvent.machine_id, Job.container_group_id, last_event)
                        .join(Job), principal)
              .where(JobEvent.at >= since, JobEvent.machine_id.is_null(False))
              .group_by(JobEvent.machine_id, Job.container_group_id).tuples())
    for machine_id, group, at in events:
        note(machine_id, group, at)
    running = _own_jobs(Job.select(Job.id, Job.machine_id, Job.container_group_id, Job.heartbeat),
                        principal).where(Job.status == RUNNING, Job.heartbeat >= since)
    for job in running:
        note(job.machine_id, job.container_group_id, job.heartbeat)
        entry = seen[job.machine_id]
        if entry["last_heartbeat"] is None or job.heartbeat > entry["last_heartbeat"]:
            entry["current_job_id"], entry["last_heartbeat"] = job.id, job.heartbeat
    if seen:
        bans = JobBan.select(JobBan.machine_id).where(JobBan.machine_id.in_(list(seen)))
        if not principal.is_admin:
            bans = bans.where(JobBan.user_id == principal.user_id)
        for ban in bans:
            seen[ban.machine_id]["bans"] += 1
    result = sorted(seen.values(), key=lambda entry: entry["last_seen"], reverse=True)
    for entry in result:
        entry["last_seen"] = timestamp(entry["last_seen"])
        entry["last_heartbeat"] = timestamp(entry["last_heartbeat"])
    return result


def activity(principal: Principal) -> dict:
    """For each of the last 24 hours, how many of the caller's jobs entered each status: the
    chart of jobs per status over a day."""
    now = db.utcnow().replace(minute=0, second=0, microsecond=0)
    first = now - ACTIVITY_WINDOW + timedelta(hours=1)
    hours = [first + timedelta(hours=index) for index in range(24)]
    counts = {status: [0] * 24 for status in STATUSES}
    # The database counts: a busy fleet writes hundreds of thousands of events a day, and
    # fetching each row to count it here held a database thread for seconds per page view.
    hour = db.database.truncate_date("hour", JobEvent.at)
    # Only transitions into a status count ("created" enters pending, "assigned" running...);
    # an attempt_failed event keeps the job running and is not a new entry.
    per_hour = (_own_jobs(JobEvent.select(hour, JobEvent.status, fn.COUNT(JobEvent.id))
                          .join(Job), principal)
                .where(JobEvent.at >= first,
                       JobEvent.kind.not_in([EventKind.ATTEMPT_FAILED, EventKind.HEARTBEAT_LOST]))
                .group_by(hour, JobEvent.status).tuples())
    for at, status, count in per_hour:
        index = int((at - first).total_seconds() // 3600)
        if 0 <= index < 24 and status in counts:
            counts[status][index] += count
    return {"hours": [timestamp(hour) for hour in hours], "counts": counts}
