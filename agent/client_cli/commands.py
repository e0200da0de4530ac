"""The `kelpie jobs ...` commands. Each takes the API, its parsed arguments and the output
streams, and returns the exit code (errors.py says what each code means)."""

import json
import sys
import time
import uuid
from urllib.parse import urlencode

from agent.client_cli import render
from agent.client_cli.errors import JOB_CANCELED, JOB_FAILED, OK, Unreachable, UsageError

FINAL = {"completed": OK, "failed": JOB_FAILED, "canceled": JOB_CANCELED}


def _job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise UsageError(f"{raw!r} is not a job id (a UUID)") from None


def _print_json(value, out) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def read_jobs(path: str, stdin=None):
    """The job (an object) or jobs (a list) in a JSON file, or on standard input for "-"."""
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    try:
        jobs = json.loads(text)
    except ValueError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply") from None
    if isinstance(jobs, list):
        if not jobs:
            raise UsageError(f"{path} holds an empty list: nothing to submit")
        return jobs
    if isinstance(jobs, dict):
        return jobs
    raise UsageError(f"{path} must hold a job (a JSON object) or a list of jobs")


def submit(api, args, out, err) -> int:
    jobs = read_jobs(args.file)
    if isinstance(jobs, list):
        created = api.request("POST", "/jobs/batch", jobs)
    else:
        created = [api.request("POST", "/jobs", jobs)]
    if args.json:
        _print_json(created if isinstance(jobs, list) else created[0], out)
    else:
        for job in created:
            out.write(f"{render.clean(job.get('id'))}\n")
        err.write(f"submitted {len(created)} job{'s' if len(created) != 1 else ''}\n")
    return OK


def list_jobs(api, args, out, err) -> int:
    query = {"page": args.page, "page_size": args.page_size}
    if args.status:
        query["status"] = args.status
    if args.group:
        query["container_group_id"] = args.group
    if args.asc:
        query["asc"] = "true"
    answer = api.request("GET", "/jobs?" + urlencode(query))
    if args.json:
        _print_json(answer, out)
        return OK
    jobs = answer.get("jobs") or []
    total = answer.get("_count", len(jobs))
    if jobs:
        out.write(render.table(render.JOB_COLUMNS, [render.job_row(job) for job in jobs]) + "\n")
    first = (args.page - 1) * args.page_size + 1
    if jobs:
        summary = f"jobs {first}-{first + len(jobs) - 1} of {total}"
    else:
        summary = f"no jobs on page {args.page} ({total} in all)"
    if first - 1 + len(jobs) < total:
        summary += f"; next page: --page {args.page + 1}"
    err.write(summary + "\n")
    return OK


def get(api, args, out, err) -> int:
    job_id = _job_id(args.id)
    if args.watch:
        return watch(api, job_id, args, out, err)
    job = api.request("GET", f"/jobs/{job_id}")
    if args.json:
        _print_json(job, out)
        return OK
    events = api.request("GET", f"/jobs/{job_id}/events").get("events") or []
    out.write(render.job_details(job, events) + "\n")
    return OK


def watch(api, job_id: str, args, out, err, sleep=time.sleep) -> int:
    """Follow a job until it ends: each new step of its timeline as it happens, then its final
    status. The exit code says how it ended (0 completed, 4 failed, 5 canceled).

    The first look must succeed (a wrong URL or key fails at once); after that, an API that is
    away for a while only delays the view, since a watched job may run for days."""
    job = api.request("GET", f"/jobs/{job_id}")
    events = api.request("GET", f"/jobs/{job_id}/events").get("events") or []
    seen: set = set()
    if not args.json:
        out.write(f"job {render.clean(job_id)}: {render.command_line(job, 100)}\n")
    emit_events(events, seen, args.json, out)
    outage = False
    while job.get("status") not in FINAL:
        sleep(args.interval)
        try:
            job = api.request("GET", f"/jobs/{job_id}")
            events = api.request("GET", f"/jobs/{job_id}/events").get("events") or []
        except Unreachable as error:
            if not outage:
                err.write(f"kelpie: API unreachable, still watching: {error}\n")
                outage = True
            continue
        if outage:
            err.write("kelpie: API reachable again\n")
            outage = False
        emit_events(events, seen, args.json, out)
    if args.json:
        out.write(json.dumps({"job": job}) + "\n")
    else:
        out.write(f"job {render.clean(job_id)} {render.clean(job.get('status'))}\n")
        for line in render.attempt_durations(events):
            out.write(line + "\n")
    out.flush()
    return FINAL[job["status"]]


def emit_events(events: list[dict], seen: set, as_json: bool, out) -> None:
    for event in events:
        if event.get("id") in seen:
            continue
        seen.add(event.get("id"))
        if as_json:
            out.write(json.dumps({"event": event}) + "\n")
        else:
            out.write(render.event_line(event) + "\n")
    out.flush()


def cancel(api, args, out, err) -> int:
    job_id = _job_id(args.id)
    answer = api.request("DELETE", f"/jobs/{job_id}")
    if args.json:
        _print_json(answer, out)
    else:
        out.write(f"canceled {job_id}\n")
    return OK


def events(api, args, out, err) -> int:
    job_id = _job_id(args.id)
    answer = api.request("GET", f"/jobs/{job_id}/events")
    if args.json:
        _print_json(answer, out)
        return OK
    rows = []
    for event in answer.get("events") or []:
        rows.append([render.clean(event.get("at")), render.clean(event.get("kind")),
                     render.clean(event.get("status")),
                     render.clean(event.get("machine_id") or "-", 40),
                     render.clean(event.get("attempt") if event.get("attempt") is not None
                                  else "-"),
                     render.clean(event.get("exit_code") if event.get("exit_code") is not None
                                  else "-"),
                     render.clean(event.get("reason") or "", 120)])
    out.write(render.table(["AT", "EVENT", "STATUS", "MACHINE", "ATTEMPT", "EXIT", "REASON"],
                           rows) + "\n")
    return OK
