"""An idle fleet in one process: N fake agents long-polling `GET /work?wait=N` on keep-alive
connections, for bench/bench_fleet.py, tests/bench/test_fleet_sim.py and `make idle-fleet`.

Each fake agent has its own machine id and one of several container groups. It loops on
`GET /work?machine_id=..&container_group_id=..&wait=W`; a job it receives is stamped with the
monotonic clock (system-wide on Linux, so comparable with the submitter's clock in another
process) and reported `/completed` at once, so the next submission finds the fleet idle again.
Every claim is counted per job id: a job claimed twice is the one failure this tool exists to
catch, and it is printed loudly.

Raw asyncio streams rather than an HTTP client library: a parked agent is then one socket, one
transport and one coroutine (a few KiB), which is what lets one process hold 10,000 of them on
a 2-core machine without becoming the bottleneck it is measuring.

Against a server that ignores `wait` (answers [] at once) an agent sleeps `fallback_sleep_s`
before asking again, as the real agent falls back to plain polling, so the tool never hammers.
With `wait_s=0` the agents are plain pollers: one `GET /work` every `fallback_sleep_s`, their
first polls spread over one interval (docs/capacity.md compares the two).

As a program (the bench drives it this way so its CPU is not the bench's):

    python -m bench.fleet_sim --url http://127.0.0.1:8787 --key KEY --agents 10000

prints `READY <n>` once every agent has its first poll in flight (first polls are spread over
one wait), `CLAIM <job> <t> <agent>`
per claim, and `SUMMARY <json>` after stdin closes (or SIGTERM) and every agent has had the
answer to its last poll.
"""

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Stats:
    """What the fleet saw; shared by every agent of one simulator."""
    claims: Counter = field(default_factory=Counter)          # job id -> times claimed
    claim_times: dict = field(default_factory=dict)           # job id -> first claim, monotonic
    claim_asked: dict = field(default_factory=dict)           # job id -> when that poll was sent
    empty_answers: int = 0
    short_empty_answers: int = 0   # [] well before the wait ended: the server ignored `wait`
    held_s: list = field(default_factory=list)                 # how long each [] was held
    last_answer_empty: dict = field(default_factory=dict)      # agent -> last answer was []
    completions: int = 0
    errors: list = field(default_factory=list)
    polls_in_flight: int = 0
    started_agents: int = 0

    @property
    def duplicates(self) -> dict:
        return {job: count for job, count in self.claims.items() if count > 1}

    def summary(self) -> dict:
        held = sorted(self.held_s)
        return {
            "claims": sum(self.claims.values()), "jobs": len(self.claims),
            "duplicates": self.duplicates, "completions": self.completions,
            "empty_answers": self.empty_answers, "short_empty_answers": self.short_empty_answers,
            "held_min_s": held[0] if held else None, "held_max_s": held[-1] if held else None,
            "agents": self.started_agents,
            "agents_last_answer_empty": sum(1 for v in self.last_answer_empty.values() if v),
            "errors": self.errors[:20], "error_count": len(self.errors),
        }


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method: str, target: str, headers: str, body: bytes = b"",
                      timeout: float = 120) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                fresh = True
            else:
                fresh = False
            try:
                # No Content-Length on a bodiless GET, as urllib3 (the agent) sends it: Sanic
                # takes even `Content-Length: 0` for a body and logs an error per request when
                # the handler leaves it unread.
                length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
                self.writer.write(
                    f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
                    f"{length}\r\n".encode() + body)
                return await asyncio.wait_for(self._response(), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                # A keep-alive connection the server closed while idle: one retry on a fresh
                # one. A fresh connection failing is a real error.
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise HttpError("chunked answers are not expected from the API")
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class FleetSim:
    def __init__(self, url: str, key: str, agents: int, *, groups: int = 20, wait_s: int = 30,
                 group_prefix: str = "fleet-g", machine_prefix: str = "fleet-m",
                 fallback_sleep_s: float = 10.0, connect_concurrency: int = 200,
                 ramp_s: float | None = None, on_claim=None):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.key, self.agents, self.groups, self.wait_s = key, agents, groups, wait_s
        self.group_prefix, self.machine_prefix = group_prefix, machine_prefix
        self.fallback_sleep_s = fallback_sleep_s
        self.ramp_s = (wait_s or fallback_sleep_s) if ramp_s is None else ramp_s
        self.on_claim = on_claim
        self.stats = Stats()
        self.stopping = asyncio.Event()
        self.all_started = asyncio.Event()
        # Connecting 10,000 sockets at once overflows the listen backlog (SYN retries of 1 s,
        # 3 s ...); a bounded ramp is both faster and kinder.
        self._connect_gate = asyncio.Semaphore(connect_concurrency)

    def group_of(self, index: int) -> str:
        return f"{self.group_prefix}{index % self.groups:02d}"

    async def run(self) -> Stats:
        await asyncio.gather(*(self._agent(i) for i in range(self.agents)))
        return self.stats

    def stop(self) -> None:
        self.stopping.set()

    def _error(self, agent: int, what: str) -> None:
        self.stats.errors.append(f"agent {agent}: {what}")
        print(f"!! fleet agent {agent}: {what}", file=sys.stderr, flush=True)

    async def _agent(self, index: int) -> None:
        stats = self.stats
        machine, group = f"{self.machine_prefix}{index:05d}", self.group_of(index)
        connection = Connection(self.host, self.port)
        headers = f"X-Kelpie-Key: {self.key}\r\n"
        report_headers = headers + "Content-Type: application/json\r\n"
        poll = f"/work?machine_id={machine}&container_group_id={group}&wait={self.wait_s}"
        report = json.dumps({"machine_id": machine, "container_group_id": group}).encode()
        first = True
        # First polls spread evenly over the ramp (one wait, or one interval for plain
        # pollers), as a fleet that came up over time: the start-up then costs what the steady
        # state does. 10,000 first polls at once queue ~10,000 claim transactions in the API,
        # which on a shared 2-core machine can take longer than Sanic's response timeout.
        await self._pause(self.ramp_s * index / self.agents)
        try:
            while not self.stopping.is_set():
                try:
                    if first:
                        async with self._connect_gate:
                            connection.reader, connection.writer = await asyncio.open_connection(
                                self.host, self.port)
                    asked = time.monotonic()
                    pending = asyncio.ensure_future(connection.request(
                        "GET", poll, headers, timeout=self.wait_s + 60))
                    if first:
                        first = False
                        stats.started_agents += 1
                        if stats.started_agents == self.agents:
                            self.all_started.set()
                    stats.polls_in_flight += 1
                    try:
                        status, body = await pending
                    finally:
                        stats.polls_in_flight -= 1
                    answered = time.monotonic()
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as error:
                    self._error(index, f"poll failed: {error!r}")
                    connection.close()
                    await self._pause(1.0)
                    continue
                if status != 200:
                    self._error(index, f"GET /work answered {status}: {body[:200]!r}")
                    await self._pause(1.0)
                    continue
                work = json.loads(body)
                if not work:
                    stats.empty_answers += 1
                    stats.last_answer_empty[index] = True
                    held = answered - asked
                    stats.held_s.append(held)
                    if self.wait_s == 0:
                        # Plain polling, as the original worker: one poll per interval.
                        await self._pause(self.fallback_sleep_s)
                    elif held < self.wait_s / 2:
                        stats.short_empty_answers += 1
                        await self._pause(self.fallback_sleep_s)
                    continue
                stats.last_answer_empty[index] = False
                job_id = work[0]["id"]
                stats.claims[job_id] += 1
                stats.claim_times.setdefault(job_id, answered)
                stats.claim_asked.setdefault(job_id, asked)
                if stats.claims[job_id] > 1:
                    self._error(index, f"!!! JOB {job_id} CLAIMED {stats.claims[job_id]} TIMES !!!")
                if self.on_claim is not None:
                    self.on_claim(job_id, answered, index)
                try:
                    status, body = await connection.request(
                        "POST", f"/jobs/{job_id}/completed", report_headers, report, timeout=60)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as error:
                    self._error(index, f"completed {job_id} failed: {error!r}")
                    connection.close()
                    continue
                if status != 200:
                    self._error(index, f"completed {job_id} answered {status}: {body[:200]!r}")
                else:
                    stats.completions += 1
        finally:
            connection.close()
            if first:  # never started (stopped during the ramp): count it anyway for READY
                stats.started_agents += 1
                if stats.started_agents == self.agents:
                    self.all_started.set()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass


def raise_nofile(wanted: int) -> int:
    """Raise the soft descriptor limit towards `wanted` (up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _main(args) -> int:
    loop = asyncio.get_running_loop()

    def claimed(job_id, at, agent):
        print(f"CLAIM {job_id} {at:.6f} {agent}", flush=True)

    sim = FleetSim(args.url, args.key, args.agents, groups=args.groups, wait_s=args.wait,
                   group_prefix=args.group_prefix, fallback_sleep_s=args.fallback_sleep,
                   ramp_s=args.ramp, on_claim=claimed)
    loop.add_signal_handler(signal.SIGTERM, sim.stop)
    loop.add_signal_handler(signal.SIGINT, sim.stop)
    # stdin closing (the driver went away, or asks us to finish) stops the fleet too.
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or sim.stop())
    runner = asyncio.ensure_future(sim.run())

    async def announce():
        await sim.all_started.wait()
        print(f"READY {sim.stats.started_agents}", flush=True)
    announcer = asyncio.ensure_future(announce())
    stats = await runner
    announcer.cancel()
    summary = stats.summary()
    print("SUMMARY " + json.dumps(summary), flush=True)
    if summary["duplicates"]:
        print(f"!!! JOBS CLAIMED MORE THAN ONCE: {summary['duplicates']}", file=sys.stderr, flush=True)
        return 2
    return 1 if summary["error_count"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="a key allowed the worker protocol")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--wait", type=int, default=30)
    parser.add_argument("--group-prefix", default="fleet-g")
    parser.add_argument("--fallback-sleep", type=float, default=10.0)
    parser.add_argument("--ramp", type=float, default=None,
                        help="seconds over which first polls are spread (default: one wait)")
    args = parser.parse_args(argv)
    limit = raise_nofile(args.agents + 256)
    if limit < args.agents + 64:
        print(f"!! RLIMIT_NOFILE is {limit}: too low for {args.agents} agents", file=sys.stderr)
        return 1
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
