"""Prometheus metrics for /metrics.

Two kinds, so that the numbers are right however many Sanic worker processes serve:
  - counters and the latency histogram count events in the process where they happen;
    prometheus-client's multiprocess mode keeps each process's values in a file under
    PROMETHEUS_MULTIPROC_DIR and sums them at scrape time. `python -m api serve` makes and
    empties that directory (api/metrics_dir.py) before any worker starts;
  - gauges of state (jobs by status and group, the webhook backlog) are read from the database
    at scrape time: the database is the one truth, and no process has to own a gauge.
Without PROMETHEUS_MULTIPROC_DIR (the app built in-process, as some tests do) the counters live
in the process's default registry.
"""

import os
import time
from datetime import datetime

from peewee import fn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from sanic import Request, Sanic

from api import db
from api.metrics_dir import MULTIPROC_ENV
from api.models import Job, WebhookDelivery

CLAIMS = Counter("kelpie_claims", "Jobs handed to a machine by GET /work")
EMPTY_CACHE_HITS = Counter("kelpie_work_empty_cache_hits",
                           "Polls answered [] from the process's knowledge that the group has "
                           "nothing to claim (no claim statement run)")
HEARTBEATS = Counter("kelpie_heartbeats", "Heartbeats accepted from the machine holding the job")
FAILURES = Counter("kelpie_attempt_failures", "Failed attempts reported by workers")
NODE_FAILURES = Counter("kelpie_node_failures",
                        "Attempts a worker reported as its node's failure (not charged to the job)")
INTERRUPTIONS = Counter("kelpie_interruptions",
                        "Running jobs handed to another machine after their heartbeats stopped")
AUTOSCALER_CALLS = Counter("kelpie_autoscaler_evaluations",
                           "Scaling rules evaluated against Salad's API")
AUTOSCALER_ERRORS = Counter("kelpie_autoscaler_errors",
                            "Scaling rule evaluations that Salad's API answered with an error")
REQUEST_SECONDS = Histogram("kelpie_http_request_duration_seconds",
                            "Time to answer an HTTP request, by route pattern",
                            ["method", "route", "status"],
                            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))


class StateCollector:
    """Gauges of the database's state, read by `read_state` (on the database pool, off the
    event loop) just before the scrape is rendered."""

    def __init__(self, state):
        self.state = state

    def collect(self):
        jobs = GaugeMetricFamily("kelpie_jobs", "Jobs by status and container group",
                                 labels=["status", "container_group_id"])
        backlog = GaugeMetricFamily("kelpie_webhook_backlog",
                                    "Webhook notifications not yet delivered (pending)")
        oldest = GaugeMetricFamily("kelpie_webhook_oldest_undelivered_seconds",
                                   "Age of the oldest pending webhook notification (0 if none)")
        counts, waiting, first = self.state
        for (status, group), count in counts:
            jobs.add_metric([status, group or ""], count)
        backlog.add_metric([], waiting)
        oldest.add_metric([], (db.utcnow() - first).total_seconds() if first else 0.0)
        yield from (jobs, backlog, oldest)


def read_state():
    counts = [((row.status, row.container_group_id), row.count) for row in
              Job.select(Job.status, Job.container_group_id, fn.COUNT(Job.id).alias("count"))
              .group_by(Job.status, Job.container_group_id)]
    pending = WebhookDelivery.select().where(WebhookDelivery.status == "pending")
    waiting = pending.count()
    first = pending.select(fn.MIN(WebhookDelivery.created)).scalar()
    if isinstance(first, str):  # SQLite hands back text for an aggregate
        first = datetime.fromisoformat(first)
    return counts, waiting, first


def render(state) -> tuple[bytes, str]:
    """The scrape: every process's counters, then the database's gauges."""
    gauges = CollectorRegistry()
    gauges.register(StateCollector(state))
    if os.environ.get(MULTIPROC_ENV):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    return generate_latest(counters) + generate_latest(gauges), CONTENT_TYPE_LATEST


def install(app: Sanic) -> None:
    """Time every request, labelled by its route pattern (never the raw path: a job id per
    label would grow without bound)."""

    @app.on_request(priority=1000)
    async def start_timer(request: Request):
        request.ctx.metrics_start = time.perf_counter()

    # (method, route, status) -> the histogram's child: `labels()` (string building, a lock and
    # a dictionary of its own) was a few per cent of an empty poll's CPU.
    children: dict[tuple, object] = {}

    @app.on_response(priority=-1000)
    async def observe(request: Request, response):
        start = getattr(request.ctx, "metrics_start", None)
        if start is None or response is None:
            return
        route = request.route
        key = (request.method, route.path if route else None, response.status)
        child = children.get(key)
        if child is None:
            if len(children) >= 10_000:  # arbitrary methods on unmatched paths: stay bounded
                children.clear()
            path = "/" + route.path.lstrip("/") if route else "unmatched"
            child = children[key] = REQUEST_SECONDS.labels(request.method, path,
                                                           str(response.status))
        child.observe(time.perf_counter() - start)
