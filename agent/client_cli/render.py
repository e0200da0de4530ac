"""Human output: tables, ages and a job's timeline. (`--json` output never comes through here.)

Every value that came from the API is made printable first: a job's command or a failure reason
is user input, and raw control characters would let it rewrite the reader's terminal.
"""

import re
from datetime import UTC, datetime

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value, limit: int | None = None) -> str:
    text = "" if value is None else str(value)
    text = _CONTROL.sub("?", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def age(stamp: str | None, now: datetime | None = None) -> str:
    moment = parse_time(stamp)
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    return duration((now - moment).total_seconds()) + " ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [[clean(h) for h in headers]] + [[clean(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def command_line(job: dict, limit: int = 60) -> str:
    parts = [job.get("command") or ""] + [str(a) for a in job.get("arguments") or []]
    return clean(" ".join(parts), limit)


JOB_COLUMNS = ["ID", "STATUS", "GROUP", "FAILURES", "MACHINE", "HEARTBEAT", "CREATED", "COMMAND"]


def job_row(job: dict, now: datetime | None = None) -> list[str]:
    return [
        clean(job.get("id")),
        clean(job.get("status")),
        clean(job.get("container_group_id") or "-", 40),
        f"{job.get('num_failures', 0)}/{job.get('max_failures', '?')}",
        clean(job.get("machine_id") or "-", 40),
        age(job.get("heartbeat"), now) if job.get("status") == "running" else "-",
        age(job.get("created"), now),
        command_line(job),
    ]


def event_line(event: dict) -> str:
    """One step of the timeline: when, what, where, and why."""
    moment = parse_time(event.get("at"))
    when = moment.strftime("%Y-%m-%d %H:%M:%S") + "Z" if moment else clean(event.get("at"))
    details = []
    if event.get("machine_id"):
        details.append(f"machine {clean(event['machine_id'], 60)}")
    if event.get("attempt") is not None:
        details.append(f"attempt {event['attempt']}")
    if event.get("exit_code") is not None:
        details.append(f"exit code {event['exit_code']}")
    if event.get("reason"):
        details.append(clean(event["reason"], 200))
    return f"{when}  {clean(event.get('kind')):<15} {'  '.join(details)}".rstrip()


def attempt_durations(events: list[dict], now: datetime | None = None) -> list[str]:
    """How long each attempt ran: from its assignment to the next event (whatever ended it:
    completed, attempt_failed, canceled, or heartbeat_lost when another machine took over)."""
    lines = []
    current = None  # the "assigned" event of the attempt still open
    for event in events:
        if current is not None:
            lines.append(_span(current, parse_time(event.get("at")),
                               f"ended by {clean(event.get('kind'))}"))
            current = None
        if event.get("kind") == "assigned":
            current = event
    if current is not None:
        lines.append(_span(current, now or datetime.now(UTC), "so far"))
    return [line for line in lines if line]


def _span(assigned: dict, end: datetime | None, how: str) -> str:
    start = parse_time(assigned.get("at"))
    if start is None or end is None:
        return ""
    return (f"attempt {assigned.get('attempt')} on {clean(assigned.get('machine_id') or '?', 60)}"
            f": {duration((end - start).total_seconds())} {how}")


JOB_FIELDS = ["id", "status", "container_group_id", "machine_id", "created", "started",
              "heartbeat", "completed", "failed", "canceled", "num_failures", "max_failures",
              "num_heartbeats", "heartbeat_interval", "webhook"]


def job_details(job: dict, events: list[dict] | None, now: datetime | None = None) -> str:
    lines = []
    width = max(len(name) for name in JOB_FIELDS + ["command"])
    for name in JOB_FIELDS:
        value = job.get(name)
        if value is None or value == "":
            continue
        if name == "heartbeat" and job.get("status") == "running":
            value = f"{value} ({age(value, now)})"
        lines.append(f"{name:<{width}}  {clean(value, 200)}")
    lines.append(f"{'command':<{width}}  {command_line(job, 200)}")
    if events is not None:
        lines.append("")
        lines.append("timeline:")
        lines.extend("  " + event_line(event) for event in events)
        if not events:
            lines.append("  (no events)")
        spans = attempt_durations(events, now)
        if spans:
            lines.append("")
            lines.extend(spans)
    return "\n".join(lines)
