"""An idle fleet against 2 API processes on PostgreSQL (issue 12's proof), beside its targets.

bench/fleet_sim.py runs as its own process holding KELPIE_BENCH_FLEET_AGENTS (default 10,000)
long-polling agents (`GET /work?wait=30`, 20 container groups, distinct machine ids). Then:

a. Parked and nothing submitted, over one whole wait (30 s): the API's total RSS (every process of its tree)
   <= 1 GiB and its CPU <= 25 % of one core.
b. 100 jobs submitted one at a time, round-robin over the groups: claim latency from the POST
   returning to the waiting agent holding the job, p50 <= 50 ms, p99 <= 250 ms; no job is
   ever claimed twice.
c. Plain empty polls (no `wait`, a group with no jobs), 64 connections (wrk, one thread so the
   load generator leaves the API its cores; its CPU is printed): >= 6,000/s, p99 <= 100 ms.
d. Heartbeats, 32 connections (as bench_api): >= 2,000/s, p99 <= 50 ms.
c and d run while the fleet stays parked, since that is the situation they describe.

    python -m bench fleet                         # or `make idle-fleet`; `make bench` runs it too
    KELPIE_BENCH_FLEET_AGENTS=1000 python -m bench fleet
    python -m bench.bench_fleet idle 10000 20     # parked cost alone: 10,000 agents at wait=20
    python -m bench.bench_fleet idle 2000 0 10    # 2,000 plain pollers, one poll per 10 s
"""

import contextlib
import json
import os
import queue
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_api import _ensure_wrk, _lua, heartbeat_script
from bench.fleet_sim import raise_nofile
from bench.targets import verdict
from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import REPO_ROOT, ApiProcess

AGENTS = int(os.environ.get("KELPIE_BENCH_FLEET_AGENTS", "10000"))
GROUPS = 20
WAIT_S = 30
# One whole wait: every parked agent comes back to re-poll exactly once in any window of that
# length, whatever the phase its start-up ramp left it in, so the window's CPU is the steady
# state's (a 20 s window of 10,000 agents that all started within 24 s over-counts by ~25 %).
IDLE_S = float(os.environ.get("KELPIE_BENCH_FLEET_IDLE_S", str(WAIT_S)))
SUBMISSIONS = 100
API_WORKERS = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run() -> None:
    wrk = _ensure_wrk()
    with _parked_fleet(AGENTS, WAIT_S) as (api, key, fleet):
        rss_mib, api_share, fleet_share, pids, elapsed = _idle(api, fleet, IDLE_S)
        print(f"parked, {elapsed:.0f} s: API RSS {rss_mib:.0f} MiB over {pids} processes "
              f"(target <= 1024 MiB)  {verdict('fleet: idle API RSS', rss_mib <= 1024)}")
        print(f"parked, {elapsed:.0f} s: API CPU {api_share * 100:.1f} % of one core "
              f"(target <= 25 %)  {verdict('fleet: idle API CPU', api_share <= 0.25)}; "
              f"simulator {fleet_share * 100:.1f} %")
        _claims(api, key, fleet)
        _empty_polls(api, key, wrk)
        _heartbeats(api, key, wrk)
        summary = fleet.finish()
        print(f"fleet: {summary['claims']} claims of {summary['jobs']} jobs, "
              f"{summary['empty_answers']} empty answers (held {_fmt(summary['held_min_s'])}–"
              f"{_fmt(summary['held_max_s'])} s; {summary['short_empty_answers']} came back "
              f"early), {summary['error_count']} errors")
        if summary["short_empty_answers"]:
            print("!! the server answered [] before the wait ended: is long-poll in this build?")
        for line in summary["errors"]:
            print(f"!! {line}")
        once = not summary["duplicates"]
        print(f"never two claims of one job: {verdict('fleet: one claim per job', once)}"
              + ("" if once else f"  !!! DUPLICATES {summary['duplicates']}"))


def idle_cost(agents: int, wait_s: int, interval_s: float = 10.0, seconds: float = 30.0) -> None:
    """The parked cost alone, for docs/capacity.md: `agents` long-polling with `wait_s`, or
    plain-polling every `interval_s` when `wait_s` is 0. No targets; prints the numbers."""
    with _parked_fleet(agents, wait_s, interval_s) as (api, _, fleet):
        rss_mib, api_share, fleet_share, pids, elapsed = _idle(api, fleet, seconds)
        mode = f"wait={wait_s} s" if wait_s else f"plain polls every {interval_s:g} s"
        per_core = agents / api_share if api_share else float("inf")
        print(f"{agents} agents, {mode}, {elapsed:.0f} s: API CPU {api_share * 100:.1f} % of one "
              f"core (= {per_core:,.0f} such agents per fully busy core), RSS {rss_mib:.0f} MiB "
              f"over {pids} processes; simulator {fleet_share * 100:.1f} %")
        summary = fleet.finish()
        print(f"  {summary['empty_answers']} empty answers, {summary['error_count']} errors")


@contextlib.contextmanager
def _parked_fleet(agents: int, wait_s: int, interval_s: float = 10.0):
    """2 API processes on a fresh database and the simulator's agents all polling."""
    # The API's workers inherit our descriptor limit: 10,000 sockets split over 2 workers.
    raise_nofile(agents + 1024)
    name, url = postgres.create_database("fleet")
    log_path = Path(tempfile.gettempdir()) / "bench-fleet-api.log"
    api = ApiProcess(url, workers=API_WORKERS, log_path=log_path,
                     env={"KELPIE_AUTH_CACHE_S": "30", "KELPIE_MAX_POLL_WAIT_S": str(WAIT_S)})
    fleet = None
    try:
        api.start()
        key = api.create_user("fleet")
        print(f"API: {API_WORKERS} Sanic worker processes, PostgreSQL {url.rsplit('@', 1)[-1]}; "
              f"fleet: {agents} agents, {GROUPS} groups, "
              + (f"wait={wait_s} s" if wait_s else f"plain polling every {interval_s:g} s"))
        fleet = Fleet(api.url, key, agents, wait_s, interval_s)
        started = time.monotonic()
        fleet.wait_ready(timeout=300)
        print(f"fleet parked: {agents} polls in flight after {time.monotonic() - started:.1f} s")
        yield api, key, fleet
    finally:
        if fleet is not None:
            fleet.kill()
        api.stop()
        postgres.drop_database(name)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- the simulator as a child process --------------------------------------------------------

class Fleet:
    """bench/fleet_sim.py in its own process; its CLAIM lines arrive on a queue."""

    def __init__(self, url: str, key: str, agents: int, wait_s: int, interval_s: float):
        self.wait_s = wait_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_sim", "--url", url, "--key", key,
             "--agents", str(agents), "--groups", str(GROUPS), "--wait", str(wait_s),
             "--fallback-sleep", str(interval_s)],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.claims: queue.Queue[tuple[str, float]] = queue.Queue()
        self.ready = threading.Event()
        self.summary: dict | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "CLAIM":
                job_id, at, _ = rest.split(" ")
                self.claims.put((job_id, float(at)))
            elif kind == "READY":
                self.ready.set()
            elif kind == "SUMMARY":
                self.summary = json.loads(rest)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fleet simulator never got every agent polling")

    def cpu_seconds(self) -> float:
        return _cpu_seconds([self.process.pid])

    def finish(self) -> dict:
        """Close stdin: each agent ends after the answer to its current poll."""
        self.process.stdin.close()
        self.process.wait(timeout=self.wait_s + 90)
        self.reader.join(timeout=10)
        if self.summary is None:
            raise RuntimeError(f"the fleet simulator exited {self.process.returncode} with no summary")
        return self.summary

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- /proc accounting --------------------------------------------------------------------------

def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def _rss_bytes(pids) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
    return total


# --- a. parked --------------------------------------------------------------------------------

def _idle(api, fleet, seconds: float):
    """(peak RSS MiB, API CPU share of one core, simulator's share, API processes, seconds)."""
    # The last first polls may still be on their way to being parked: let the API settle.
    time.sleep(5)
    pids = _tree(api.process.pid)
    api_cpu, fleet_cpu, started = _cpu_seconds(pids), fleet.cpu_seconds(), time.monotonic()
    peak_rss = 0
    while time.monotonic() - started < seconds:
        time.sleep(1)
        peak_rss = max(peak_rss, _rss_bytes(pids))
    elapsed = time.monotonic() - started
    api_share = (_cpu_seconds(pids) - api_cpu) / elapsed
    fleet_share = (fleet.cpu_seconds() - fleet_cpu) / elapsed
    return peak_rss / 2**20, api_share, fleet_share, len(pids), elapsed


# --- b. claim latency ---------------------------------------------------------------------------

def _claims(api, key, fleet) -> None:
    latencies, missing = [], 0
    for n in range(SUBMISSIONS):
        group = f"fleet-g{n % GROUPS:02d}"
        status, body = api.request("POST", "/jobs", sync_job(container_group_id=group), key=key)
        posted = time.monotonic()
        assert status in (200, 201, 202), (status, body)
        job_id = body["id"]
        deadline = posted + 10
        while True:
            try:
                claimed_id, at = fleet.claims.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                missing += 1
                print(f"!! job {job_id} (group {group}) not claimed within 10 s")
                break
            if claimed_id == job_id:
                # A claim stamped before the POST's answer reached us counts as instant.
                latencies.append(max(0.0, at - posted) * 1000)
                break
        if missing >= 5:
            print("!! 5 jobs unclaimed: the API is not keeping up; claim latency stops here")
            break
        time.sleep(0.075)
    latencies.sort()
    if not latencies:
        print(f"claim latency: no job of {SUBMISSIONS} was claimed  "
              f"{verdict('fleet: claim latency', False)}")
        return
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    met = p50 <= 50 and p99 <= 250 and missing == 0
    print(f"claim latency, POST returned -> agent holds job ({len(latencies)}/{SUBMISSIONS} "
          f"claimed): p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {latencies[-1]:.1f} ms  "
          f"(target p50 <= 50, p99 <= 250)  {verdict('fleet: claim latency', met)}")


# --- c, d. wrk while parked ----------------------------------------------------------------------

def _wrk(wrk, url, script, connections, duration, threads) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "-s", script, url],
        capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"KELPIE (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", output)
    requests, duration_us, p50_us, p99_us, errors = match.groups()
    seconds = int(duration_us) / 1e6
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rps": int(requests) / seconds, "p50": float(p50_us) / 1000,
            "p99": float(p99_us) / 1000, "errors": int(errors), "wrk_cpu": cpu / seconds}


def _empty_polls(api, key, wrk) -> None:
    script = _lua(f"""
        counter = 0
        request = function()
          counter = counter + 1
          return wrk.format("GET", "/work?machine_id=empty-" .. (counter % 1000) ..
                            "&container_group_id=fleet-empty", {{["X-Kelpie-Key"] = "{key}"}})
        end
    """)
    _while_parked(api, wrk, script, "plain empty polls", "fleet: empty polls", connections=64,
                  min_rps=6000, max_p99=100)


def _heartbeats(api, key, wrk) -> None:
    script = heartbeat_script(api, key, "fleet-heartbeats")  # no fleet agent waits on it
    _while_parked(api, wrk, script, "heartbeats, fleet parked", "fleet: heartbeats",
                  connections=32, min_rps=2000, max_p99=50)


WRK_S = 10


def _while_parked(api, wrk, script, what: str, target: str, *, connections: int, min_rps: int,
                  max_p99: int) -> None:
    """One wrk load (one thread, so the load generator leaves the API its cores) beside the
    parked fleet: its rate and p99 against the target, and the CPU the API and wrk spent."""
    pids = _tree(api.process.pid)
    api_cpu, started = _cpu_seconds(pids), time.monotonic()
    result = _wrk(wrk, api.url, script, connections=connections, duration=WRK_S, threads=1)
    api_share = (_cpu_seconds(pids) - api_cpu) / (time.monotonic() - started)
    met = result["rps"] >= min_rps and result["p99"] <= max_p99 and result["errors"] == 0
    label = f"{what} ({connections} conns, {WRK_S} s)"
    print(f"{label}: {result['rps']:.0f}/s  p50 {result['p50']:.1f} ms"
          f"  p99 {result['p99']:.1f} ms  errors {result['errors']}  (target >= {min_rps}/s, "
          f"p99 <= {max_p99} ms)  {verdict(target, met)}; API CPU {api_share * 100:.0f} %"
          f"{_per_request(api_share, result['rps'])}, wrk CPU {result['wrk_cpu'] * 100:.0f} % of "
          f"one core")


def _per_request(api_share: float, rps: float) -> str:
    """API CPU per request, the parked fleet's share included: on a shared machine the rate
    moves with the neighbours' load, the CPU a request costs much less."""
    return f" (~{api_share / rps * 1e6:.0f} µs per request)" if rps else ""

if __name__ == "__main__":
    # `python -m bench.bench_fleet idle AGENTS WAIT [INTERVAL [SECONDS]]`: the parked cost alone.
    if sys.argv[1:2] == ["idle"]:
        agents, wait = int(sys.argv[2]), int(sys.argv[3])
        extra = [float(value) for value in sys.argv[4:6]]
        idle_cost(agents, wait, *extra)
    else:
        from bench import __main__ as bench_main
        sys.exit(bench_main.main(["fleet"]))
