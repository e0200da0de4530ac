"""The chaos soak: the fleet as a whole, under a seeded schedule of faults (issue 11's proof).

Real processes on loopback: a PostgreSQL cluster of its own (so restarting it disturbs nothing
else), SeaweedFS, two API processes on that database behind a balancer (tests/soak/balancer.py,
its own process, which also records every worker-protocol exchange), real agents
(`python -m agent`) for three tenants running examples/train.py with checkpoints and outputs
synced to the bucket, a webhook receiver per tenant plus one slow receiver, and a noisy tenant
listing `page_size=1000` and submitting in a loop.

Faults, drawn from a seeded generator (kinds, times and targets; the seed is printed with the
command that replays it): agents SIGKILLed (the node vanishes) and SIGTERMed (the node is shut
down), each replaced by a fresh node as Salad would; an API process SIGKILLed and restarted;
PostgreSQL restarted (fast or immediate); SeaweedFS stopped for 10 s. From the start: an agent
with wrong S3 credentials, an agent whose storage path is cut after its start-up check, a job
that hangs (timeout_s) and one that exits 1 (max_failures).

At the end it asserts what issue 11 promises and prints the figures (jobs, faults, work redone
per interruption, heartbeat latency and spacing, webhook latency, recovery after each fault).

Sizes come from the environment; the defaults are the bounded form that `make test` runs (under
two minutes; its window is the shortest that still draws every fault the one-minute window did);
`make soak` runs the full form:
  KELPIE_SOAK_SEED       the schedule's seed (random, printed, when unset)
  KELPIE_SOAK_JOBS       good jobs, spread over the three tenants (45)
  KELPIE_SOAK_AGENTS     good agents, spread over the three tenants (6)
  KELPIE_SOAK_WINDOW_S   seconds over which the faults are spread (45)
  KELPIE_SOAK_MAX_STEPS  the longest job's steps (20; steps take 0.1-0.5 s)
  KELPIE_SOAK_SLOW_S     how long the slow webhook receiver takes to answer (5)
  KELPIE_SOAK_TIMEOUT_S  the test's own time limit (290)
"""

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from api import webhooks
from tests.e2e.harness import REPO_ROOT, TRAIN, Agent, object_keys, read_object, sync_block
from tests.soak.balancer import read_record
from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.net import free_port, wait_for_http, wait_until
from tests.support.pg_cluster import PgCluster
from tests.support.seaweed import SeaweedFS
from tests.support.tcp_relay import TcpRelay
from tests.support.webhook_receiver import WebhookReceiver

SEED = int(os.environ.get("KELPIE_SOAK_SEED") or secrets.randbelow(10**9))
JOBS = int(os.environ.get("KELPIE_SOAK_JOBS", "45"))
AGENTS = max(3, int(os.environ.get("KELPIE_SOAK_AGENTS", "6")))
WINDOW_S = float(os.environ.get("KELPIE_SOAK_WINDOW_S", "45"))
MAX_STEPS = max(3, int(os.environ.get("KELPIE_SOAK_MAX_STEPS", "20")))
# It also sets the webhook lease (api.webhooks.lease_seconds, from the timeout below) that the
# deliveries of a SIGKILLed API wait out before the other sends them: often the bounded run's end.
SLOW_S = float(os.environ.get("KELPIE_SOAK_SLOW_S", "5"))
TIMEOUT_S = int(os.environ.get("KELPIE_SOAK_TIMEOUT_S", "290"))

TENANTS = ("A", "B", "C")  # C is also the noisy one
HEARTBEAT_INTERVAL = 1  # of every job
LEASE_GRACE = 3  # KELPIE_LEASE_GRACE_S of the APIs
LEASE = max(2 * HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL + LEASE_GRACE)
SLOW_JOBS = 3  # tenant C's jobs whose webhook is the slow receiver
BUCKET = "soak"
EXIT_NODE_UNUSABLE = 3

pytestmark = [pytest.mark.soak, pytest.mark.timeout(TIMEOUT_S)]


def replay_command() -> str:
    sizes = " ".join(f"{name}={os.environ[name]}" for name in (
        "KELPIE_SOAK_JOBS", "KELPIE_SOAK_AGENTS", "KELPIE_SOAK_WINDOW_S", "KELPIE_SOAK_MAX_STEPS",
        "KELPIE_SOAK_SLOW_S", "KELPIE_SOAK_TIMEOUT_S") if name in os.environ)
    return (f"KELPIE_SOAK_SEED={SEED} {sizes} .venv/bin/python -m pytest -q -s "
            f"-p no:cacheprovider tests/soak").replace("  ", " ")


# --- the schedule ------------------------------------------------------------------------------

@dataclass
class Fault:
    at: float  # seconds after the start of the fault window
    kind: str  # agent-kill | agent-term | api-kill | pg-restart | seaweed-stop
    target: int  # agent: position among the busy; API index; pg-restart: 0 fast, 1 immediate
    started: float = 0.0  # time.monotonic() when it was done
    ended: float = 0.0  # ... and when what it took away was back
    job_id: str | None = None  # the job an agent held when it was taken away
    machine_id: str | None = None
    replacement: str | None = None  # the fresh node that took an agent's place
    recovery: float | None = None  # seconds, computed at the end
    note: str = ""


def schedule(rng: random.Random, window: float, agents: int) -> list[Fault]:
    """Kinds, times and targets, all from the seed. Per minute of window: two agent kills and
    one agent SIGTERM; per two minutes (at least one each): an API kill, a PostgreSQL restart
    and a SeaweedFS stop."""
    minutes = window / 60
    counts = {"agent-kill": max(1, round(2 * minutes)), "agent-term": max(1, round(minutes)),
              "api-kill": max(1, round(minutes / 2)), "pg-restart": max(1, round(minutes / 2)),
              "seaweed-stop": max(1, round(minutes / 2))}
    faults = []
    for kind, count in counts.items():
        for _ in range(count):
            # Agent faults: the seed picks among the agents running a job at that moment
            # (taking an idle node away proves little), by position, see `inflict`.
            target = {"agent-kill": 1000, "agent-term": 1000, "api-kill": 2,
                      "pg-restart": 2, "seaweed-stop": 1}[kind]
            faults.append(Fault(round(rng.uniform(3, window), 1), kind,
                                rng.randrange(target)))
    return sorted(faults, key=lambda fault: fault.at)


# --- small clients -------------------------------------------------------------------------------

def call(url: str, method: str, path: str, body=None, *, key: str,
         headers: dict | None = None, timeout: float = 60):
    """One JSON request; (status, decoded body). A refused or cut connection is status 0."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Kelpie-Key", key)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, (json.loads(raw) if raw else None)
        except ValueError:
            return error.code, raw.decode(errors="replace")
    except OSError as error:
        return 0, str(error)


def call_ok(url, method, path, body=None, *, key, headers=None, expect=(200, 201, 202),
            attempts: int = 20):
    """A request the soak itself needs answered: retried through faults (502 while an API
    restarts, a refused connection), never through a 4xx."""
    for attempt in range(attempts):
        status, answer = call(url, method, path, body, key=key, headers=headers)
        if status in expect:
            return answer
        if 400 <= status < 500:
            break
        time.sleep(min(0.2 * 2 ** attempt, 3))
    raise AssertionError(f"{method} {path}: {status} {answer}")


def percentile(values, fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the soak's pieces ---------------------------------------------------------------------------

@dataclass
class Tenant:
    name: str
    key: str
    secret: str
    group: str
    receiver: WebhookReceiver
    jobs: dict = field(default_factory=dict)  # job id -> its spec (steps) for the checks


class Fleet:
    """The good agents, one slot each; a slot whose agent is taken away (or exits on its own)
    gets a fresh node, as Salad replaces a lost one."""

    def __init__(self, root: Path, envs: list[dict]):
        self.root = root
        self.envs = envs  # one per slot
        self.generation = [0] * len(envs)
        self.slots: list[Agent] = [None] * len(envs)
        self.retired: list[Agent] = []
        self.exits: list[tuple[str, int]] = []  # (machine id, code) of agents that left alone

    def machine(self, slot: int) -> str:
        return f"node-{slot}-g{self.generation[slot]}"

    def start(self, slot: int) -> Agent:
        machine = self.machine(slot)
        agent = Agent(self.root / machine, {**self.envs[slot], "SALAD_MACHINE_ID": machine})
        agent.machine_id = machine
        self.slots[slot] = agent.start()
        return agent

    def replace(self, slot: int) -> None:
        self.retired.append(self.slots[slot])
        self.generation[slot] += 1
        self.start(slot)

    def supervise(self) -> None:
        for slot, agent in enumerate(self.slots):
            code = agent.process.poll()
            if code is not None:
                self.exits.append((agent.machine_id, code))
                self.replace(slot)

    def all_agents(self) -> list[Agent]:
        return self.retired + self.slots

    def stop(self) -> None:
        for agent in self.slots:
            if agent is not None:
                agent.stop(timeout=10)


class Noise(threading.Thread):
    """The noisy tenant: lists page_size=1000 and submits in a loop (to a container group no
    agent serves, so its jobs only weigh on the lists); every fifth submission is sent twice
    with one Idempotency-Key, and must come back as the same job."""

    def __init__(self, url: str, key: str):
        super().__init__(daemon=True, name="soak-noise")
        self.url, self.key = url, key
        self.stop_event = threading.Event()
        self.statuses: Counter = Counter()
        self.duplicates: list[tuple] = []
        self.submitted = 0

    def run(self) -> None:
        count = 0
        while not self.stop_event.is_set():
            count += 1
            status, _ = call(self.url, "GET", "/jobs?page_size=1000", key=self.key)
            self.statuses[f"list {status}"] += 1
            job = {"command": "true", "container_group_id": "soak-noise"}
            if count % 5 == 0:
                headers = {"Idempotency-Key": f"noise-{count}-{secrets.token_hex(4)}"}
                first = call(self.url, "POST", "/jobs", job, key=self.key, headers=headers)
                again = call(self.url, "POST", "/jobs", job, key=self.key, headers=headers)
                self.statuses[f"submit {first[0]}"] += 1
                self.statuses[f"resubmit {again[0]}"] += 1
                if first[0] in (200, 201, 202) and again[0] in (200, 201, 202) \
                        and first[1]["id"] != again[1]["id"]:
                    self.duplicates.append((first[1]["id"], again[1]["id"]))
                self.submitted += 1
            else:
                status, _ = call(self.url, "POST", "/jobs", job, key=self.key)
                self.statuses[f"submit {status}"] += 1
                self.submitted += 1
            self.stop_event.wait(0.05)


def start_balancer(directory: Path, backends: list[str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    record = directory / "exchanges.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.soak.balancer", "--port", str(port), "--record",
         str(record), *backends], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=open(directory / "balancer.log", "ab"), start_new_session=True)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz", timeout=30, process=process)
    return process, url, record


def steps_run(agents: list[Agent]) -> Counter:
    """Steps each job's program ran, over all its attempts, from the agents' logs: a job's
    output lines follow the agent's "command started" line for it."""
    counts: Counter = Counter()
    for agent in agents:
        current = None
        for raw in agent.output().splitlines():
            if raw.startswith("{"):
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if line.get("message") == "command started":
                    current = line.get("job_id")
            elif current and raw.startswith("train: step ") and raw.endswith("checkpoint saved"):
                counts[current] += 1
    return counts


# --- the soak ------------------------------------------------------------------------------------

def test_chaos_soak():
    rng = random.Random(SEED)
    faults = schedule(rng, WINDOW_S, AGENTS)
    print(f"\nsoak seed {SEED}: {JOBS} jobs, {AGENTS} agents, {len(faults)} faults over "
          f"{WINDOW_S:.0f} s\nreplay: {replay_command()}", flush=True)
    for fault in faults:
        print(f"  scheduled t+{fault.at:6.1f}s {fault.kind} target {fault.target}")
    root = Path(tempfile.mkdtemp(prefix="kelpie-soak-"))
    print(f"logs in {root}", flush=True)

    with contextlib.ExitStack() as stack:
        pg = PgCluster()
        stack.callback(pg.stop)
        pg.start()
        seaweed = SeaweedFS(data_dir=root / "seaweed")
        (root / "seaweed").mkdir()
        stack.callback(seaweed.stop)
        seaweed.start()
        seaweed.create_bucket(BUCKET)
        s3 = seaweed.client()

        # Two API processes on the one database; they share the admin key. Leases: interval +
        # a short grace, so a lost node's job moves within seconds; webhook deliveries may
        # take as long as the slow receiver plus a margin.
        api_env = {"KELPIE_LEASE_GRACE_S": str(LEASE_GRACE),
                   "KELPIE_WEBHOOK_TIMEOUT_S": str(SLOW_S + 5),
                   "KELPIE_WEBHOOK_RETRY_BASE_S": "1", "KELPIE_WEBHOOK_RETRY_MAX_S": "5",
                   "KELPIE_WEBHOOK_CONCURRENCY": "8"}
        apis = [ApiProcess(pg.url, env=api_env, log_path=root / f"api-{index}.log")
                for index in range(2)]
        apis[1].admin_key = apis[0].admin_key
        for api in apis:
            stack.callback(api.stop)
        apis[0].prepare_database()  # then both start at once without racing to migrate
        with ThreadPoolExecutor(len(apis)) as pool:
            list(pool.map(ApiProcess.start, apis))
        balancer, url, record = start_balancer(root, [api.url for api in apis])
        stack.callback(lambda: (os.killpg(balancer.pid, signal.SIGKILL), balancer.wait()))
        imds = FakeImds()
        imds.start()
        stack.callback(imds.stop)

        slow = WebhookReceiver()
        slow.delay = SLOW_S
        slow.start()
        stack.callback(slow.stop)
        tenants: list[Tenant] = []
        for name in TENANTS:
            key = apis[0].create_user(f"soak-{name}")
            secret = call_ok(url, "GET", "/users/me/webhook-secret", key=key)["secret"]
            receiver = WebhookReceiver()
            receiver.start()
            stack.callback(receiver.stop)
            tenants.append(Tenant(name, key, secret, f"soak-{name}-{secrets.token_hex(3)}",
                                  receiver))
        by_name = {tenant.name: tenant for tenant in tenants}

        def agent_env(tenant: Tenant, **overrides) -> dict:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KELPIE_"))},
                **seaweed.env,
                "KELPIE_API_URL": url, "KELPIE_API_KEY": tenant.key,
                "KELPIE_IMDS_URL": imds.url,
                "SALAD_CONTAINER_GROUP_ID": tenant.group,
                "HEARTBEAT_INTERVAL_S": "0.5", "KELPIE_SHUTDOWN_GRACE_S": "5",
                "KELPIE_KILL_GRACE_S": "3", "KELPIE_LOG_LEVEL": "INFO",
                "INPUT_DIR": "inputs", "CHECKPOINT_DIR": "checkpoints", "OUTPUT_DIR": "outputs",
                "PYTHONUNBUFFERED": "1",
            }
            env.update(overrides)
            return env

        # The broken nodes, before any job exists, so what they do is not left to chance.
        # Wrong S3 credentials (tenant A): must refuse to start, claiming nothing.
        bad_creds = Agent(root / "broken-credentials",
                          {**agent_env(by_name["A"], AWS_SECRET_ACCESS_KEY="not-the-secret"),
                           "SALAD_MACHINE_ID": "broken-credentials"}).start()
        stack.callback(bad_creds.stop, 5)
        # Storage cut after its start-up check (tenant B, whose jobs allow one failure only):
        # every job it claims must go back uncharged, then it must give up.
        relay = TcpRelay("127.0.0.1", seaweed.s3_port)
        cut = Agent(root / "storage-cut", {
            **agent_env(by_name["B"], AWS_ENDPOINT_URL=relay.url,
                        AWS_ENDPOINT_URL_S3=relay.url, MAX_JOB_FAILURES="2"),
            "SALAD_MACHINE_ID": "storage-cut"}).start()
        stack.callback(cut.stop, 5)
        wait_until(lambda: cut.state().get("status") == "idle", timeout=60,
                   message="the storage-cut agent did not get past its start-up check")
        relay.cut()

        # The jobs: mixed lengths, checkpointing, an input each; one batch per tenant, sent
        # twice with one Idempotency-Key (a client retrying after a timeout) -> one set of jobs.
        specs = defaultdict(list)
        for index in range(JOBS):
            tenant = tenants[index % 3]
            steps = rng.randint(2, MAX_STEPS)
            step_seconds = rng.choice([0.1, 0.25, 0.5])
            job_root = f"{tenant.name}/{index:04d}"
            s3.put_object(Bucket=BUCKET, Key=f"{job_root}/inputs/data.txt",
                          Body=f"input of {job_root}".encode())
            webhook = (slow.url if tenant.name == "C" and len(specs["C"]) < SLOW_JOBS
                       else tenant.receiver.url)
            specs[tenant.name].append({
                "command": sys.executable,
                "arguments": [TRAIN, "--steps", str(steps), "--step-seconds", str(step_seconds)],
                "sync": sync_block(BUCKET, job_root), "heartbeat_interval": HEARTBEAT_INTERVAL,
                "webhook": webhook, "container_group_id": tenant.group,
                "max_failures": 1 if tenant.name == "B" else 3,
                "environment": {"SOAK_ROOT": job_root},
            })
        poison_hang = {"command": sys.executable,
                       "arguments": ["-c", "import time\nwhile True: time.sleep(1)"],
                       "sync": sync_block(BUCKET, "A/poison-hang"),
                       "heartbeat_interval": HEARTBEAT_INTERVAL, "timeout_s": 6,
                       "max_failures": 1, "webhook": by_name["A"].receiver.url,
                       "container_group_id": by_name["A"].group}
        poison_exit = {"command": sys.executable,
                       "arguments": [TRAIN, "--steps", "3", "--step-seconds", "0.1",
                                     "--fail-with", "1"],
                       "sync": sync_block(BUCKET, "A/poison-exit"),
                       # One failure ends it: a second would need another machine of
                       # tenant A that no ban excludes, which a small fleet may not have.
                       "heartbeat_interval": HEARTBEAT_INTERVAL, "max_failures": 1,
                       "webhook": by_name["A"].receiver.url,
                       "container_group_id": by_name["A"].group}
        specs["A"] = [poison_hang, poison_exit, *specs["A"]]
        poison = {}
        for tenant in tenants:
            headers = {"Idempotency-Key": f"soak-{SEED}-{tenant.name}"}
            first = call_ok(url, "POST", "/jobs/batch", specs[tenant.name], key=tenant.key,
                            headers=headers)
            again = call_ok(url, "POST", "/jobs/batch", specs[tenant.name], key=tenant.key,
                            headers=headers)
            assert [job["id"] for job in first] == [job["id"] for job in again], \
                "a retried batch with the same Idempotency-Key made new jobs"
            for job, spec in zip(first, specs[tenant.name], strict=True):
                if spec is poison_hang:
                    poison["hang"] = job["id"]
                elif spec is poison_exit:
                    poison["exit"] = job["id"]
                else:
                    tenant.jobs[job["id"]] = {"steps": int(spec["arguments"][2]),
                                              "root": spec["environment"]["SOAK_ROOT"],
                                              "slow": spec["webhook"] == slow.url}

        fleet = Fleet(root, [agent_env(tenants[slot % 3]) for slot in range(AGENTS)])
        for slot in range(AGENTS):
            fleet.start(slot)
        stack.callback(fleet.stop)
        noise = Noise(url, by_name["C"].key)
        noise.start()
        stack.callback(noise.stop_event.set)

        # --- the run: faults on schedule, the fleet supervised, until every job is final.
        t0 = time.monotonic()
        todo = list(faults)
        finished_at = None
        finish_by = t0 + WINDOW_S + max(90.0, JOBS * MAX_STEPS * 0.3 * 2 / AGENTS)
        last_look = 0.0
        all_ids = {job_id: tenant for tenant in tenants for job_id in tenant.jobs}
        all_ids.update({job_id: by_name["A"] for job_id in poison.values()})
        final = {}
        while True:
            fleet.supervise()
            now = time.monotonic()
            if todo and now - t0 >= todo[0].at:
                fault = todo.pop(0)
                inflict(fault, fleet=fleet, apis=apis, pg=pg, seaweed=seaweed)
                print(f"  t+{now - t0:6.1f}s {fault.kind} target {fault.target} "
                      f"{fault.machine_id or ''} {fault.note} ({fault.ended - fault.started:.1f} s)",
                      flush=True)
                continue
            if now - last_look > 2:
                last_look = now
                for job_id, tenant in all_ids.items():
                    if job_id in final:
                        continue
                    status, job = call(url, "GET", f"/jobs/{job_id}", key=tenant.key)
                    if status == 200 and job["status"] in ("completed", "failed", "canceled"):
                        final[job_id] = job
                if len(final) == len(all_ids) and finished_at is None:
                    finished_at = now
                    print(f"  t+{now - t0:6.1f}s every job is final", flush=True)
            if finished_at is not None and not todo:
                break
            if now > finish_by:
                missing = [job_id for job_id in all_ids if job_id not in final]
                pytest.fail(f"{len(missing)} jobs not final after {now - t0:.0f} s "
                            f"(e.g. {missing[:5]}); logs in {root}\nreplay: {replay_command()}")
            time.sleep(0.25)
        noise.stop_event.set()
        noise.join(timeout=60)
        run_seconds = time.monotonic() - t0

        # Webhooks: every notification of the soak's jobs delivered (slow ones included).
        def outbox() -> list[tuple]:
            connection = psycopg2.connect(pg.url)
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT id, job_id, url, job_status, status, body "
                                   "FROM webhook_deliveries ORDER BY id")
                    return cursor.fetchall()
            finally:
                connection.close()

        wait_until(lambda: all(row[4] != "pending" for row in outbox()),
                   timeout=max(120, 4 * SLOW_S * SLOW_JOBS), interval=1,
                   message="webhook deliveries still pending")
        rows = outbox()

        # --- the checks, and the figures ---------------------------------------------------------
        exchanges = read_record(record)
        problems = []
        good_ids = {job_id: (tenant, info) for tenant in tenants
                    for job_id, info in tenant.jobs.items()}

        # 1. Every good job completed exactly once, uncharged, its outputs intact.
        interruptions = 0
        for job_id, (tenant, info) in good_ids.items():
            job = final[job_id]
            interruptions += job.get("num_interruptions") or 0
            if job["status"] != "completed" or job["num_failures"] != 0:
                problems.append(f"good job {job_id} ended {job['status']} with "
                                f"{job['num_failures']} failures")
                continue
            events = call_ok(url, "GET", f"/jobs/{job_id}/events", key=tenant.key)["events"]
            completions = [event for event in events if event["kind"] == "completed"]
            if len(completions) != 1:
                problems.append(f"good job {job_id}: {len(completions)} completions")
            charged = [event for event in events if event["kind"] == "attempt_failed"
                       and not (event["reason"] or "").startswith("node failure")]
            if charged:
                problems.append(f"good job {job_id} was charged: {charged}")
            keys = object_keys(s3, BUCKET, f"{info['root']}/outputs/")
            if keys != [f"{info['root']}/outputs/result.json"]:
                problems.append(f"good job {job_id}: outputs {keys}")
                continue
            result = json.loads(read_object(s3, BUCKET, keys[0]))
            steps = info["steps"]
            expected = {"steps": steps, "total": steps * (steps + 1) // 2,
                        "inputs": ["data.txt"], "job_id": job_id}
            if {name: result.get(name) for name in expected} != expected:
                problems.append(f"good job {job_id}: result {result}, expected {expected}")

        # 2. The poison jobs failed, each for its own reason.
        hang = final[poison["hang"]]
        hang_events = call_ok(url, "GET", f"/jobs/{poison['hang']}/events",
                              key=by_name["A"].key)["events"]
        if hang["status"] != "failed" or "timed out" not in json.dumps(
                [event for event in hang_events if event["status"] == "failed"]):
            problems.append(f"the hanging job: {hang['status']}, events {hang_events}")
        exit1 = final[poison["exit"]]
        exit_events = call_ok(url, "GET", f"/jobs/{poison['exit']}/events",
                              key=by_name["A"].key)["events"]
        charged_exits = [event["exit_code"] for event in exit_events
                         if event["kind"] == "attempt_failed"
                         and not (event["reason"] or "").startswith("node failure")]
        if exit1["status"] != "failed" or exit1["num_failures"] != 1 \
                or set(charged_exits) != {1}:
            problems.append(f"the exit-1 job: {exit1['status']}, events {exit_events}")

        # 3. The broken nodes blamed themselves and charged nobody.
        if bad_creds.process.poll() != EXIT_NODE_UNUSABLE:
            problems.append(f"the wrong-credentials agent: exit {bad_creds.process.poll()}")
        if any(x.claimed and x.machine_id == "broken-credentials" for x in exchanges):
            problems.append("the wrong-credentials agent claimed a job")
        if cut.process.poll() != EXIT_NODE_UNUSABLE:
            problems.append(f"the storage-cut agent: exit {cut.process.poll()}")
        cut_claims = {x.job_id for x in exchanges if x.claimed and x.machine_id == "storage-cut"}
        cut_failures = 0
        for job_id in cut_claims:
            tenant = all_ids[job_id]
            events = call_ok(url, "GET", f"/jobs/{job_id}/events", key=tenant.key)["events"]
            for event in events:
                if event["machine_id"] == "storage-cut" and event["kind"] in (
                        "attempt_failed", "failed"):
                    cut_failures += 1
                    if not (event["reason"] or "").startswith("node failure"):
                        problems.append(f"the storage-cut agent charged {job_id}: {event}")
            if job_id in good_ids and final[job_id]["num_failures"]:
                problems.append(f"{job_id}, touched by the storage-cut agent, has failures")
        if not cut_claims:
            problems.append("the storage-cut agent never claimed a job (nothing was proven)")

        # 4. Webhooks: all delivered, signatures valid, the slow receiver blocked no one.
        secrets_by_url = {tenant.receiver.url: tenant.secret for tenant in tenants}
        secrets_by_url[slow.url] = by_name["C"].secret
        soak_jobs = set(all_ids)
        ours = [row for row in rows if row[1] in soak_jobs]
        undelivered = [row[:5] for row in ours if row[4] != "delivered"]
        if undelivered:
            problems.append(f"{len(undelivered)} webhooks not delivered, e.g. {undelivered[:3]}")
        arrivals = {}  # delivery id -> first 2xx arrival (wall time)
        bad_signatures = 0
        wall = time.time() - time.monotonic()  # Received.at is monotonic
        for receiver in [tenant.receiver for tenant in tenants] + [slow]:
            secret = secrets_by_url[receiver.url]
            with receiver.lock:
                received = list(receiver.received)
            for item in received:
                if not webhooks.verify(secret, item.raw, item.signature or "",
                                       now=item.at + wall):
                    bad_signatures += 1
                if 200 <= item.answered < 300:
                    arrivals.setdefault(int(item.delivery), item.at + wall)
        if bad_signatures:
            problems.append(f"{bad_signatures} webhooks with a bad signature")
        missing = [row[0] for row in ours if row[4] == "delivered" and row[0] not in arrivals]
        if missing:
            problems.append(f"{len(missing)} delivered webhooks never arrived: {missing[:5]}")
        for job_id in good_ids:
            completed = [row for row in ours if row[1] == job_id and row[3] == "completed"]
            if len(completed) != 1:
                problems.append(f"good job {job_id}: {len(completed)} 'completed' webhooks")
        for job_id, reason in ((poison["hang"], "timed out"), (poison["exit"], None)):
            failed = [json.loads(row[5]) for row in ours if row[1] == job_id
                      and row[3] == "failed"]
            if len(failed) != 1 or (reason and failed[0].get("reason") != reason):
                problems.append(f"poison job {job_id}: 'failed' webhooks {failed}")
        latency = defaultdict(list)
        for row in ours:
            if row[0] in arrivals:
                lane = "slow" if row[2] == slow.url else "others"
                latency[lane].append(arrivals[row[0]] - iso_seconds(json.loads(row[5])
                                                                    ["timestamp"]))
        # Not blocked behind the slow receiver: a delivery to another tenant that queued behind
        # it would wait at least one slow answer, most of them several.
        if percentile(latency["others"], 0.99) >= SLOW_S:
            problems.append(f"other tenants' webhook p99 {percentile(latency['others'], 0.99):.1f}"
                            f" s >= the slow receiver's {SLOW_S} s")

        # 5. Heartbeats of good agents: latency and spacing under the lease.
        broken = {"broken-credentials", "storage-cut"}
        beats = [x for x in exchanges if x.path.endswith("/heartbeat")
                 and x.machine_id not in broken]
        answered = [x.seconds for x in beats if x.status == 200]
        spacing = []
        series = defaultdict(list)
        for x in beats:
            series[(x.job_id, x.machine_id)].append(x.started)
        for times in series.values():
            spacing += [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        beat_p99, gap_p99 = percentile(answered, 0.99), percentile(spacing, 0.99)
        if beat_p99 >= LEASE or gap_p99 >= LEASE:
            problems.append(f"heartbeat p99 {beat_p99:.2f} s / spacing p99 {gap_p99:.2f} s "
                            f">= lease {LEASE} s")
        server_errors = Counter(x.status for x in exchanges if x.status >= 500 and x.status != 502)
        if server_errors:
            problems.append(f"the API answered the worker protocol with {dict(server_errors)}")
        noise_errors = {name: count for name, count in noise.statuses.items()
                        if name.split()[-1].startswith("5") and not name.endswith("502")}
        if noise_errors:
            problems.append(f"the noisy tenant got {noise_errors}")
        if noise.duplicates:
            problems.append(f"Idempotency-Key retries made new jobs: {noise.duplicates[:3]}")

        # --- figures
        for fault in faults:
            fault.recovery = recovery(fault, exchanges)
        ran = steps_run(fleet.all_agents())
        redone = sum(ran[job_id] - info["steps"] for job_id, (_, info) in good_ids.items())
        by_kind = defaultdict(list)
        for fault in faults:
            by_kind[fault.kind].append(fault)
        lines = [f"soak seed {SEED}: {run_seconds:.0f} s, {len(good_ids)} good jobs "
                 f"({len(good_ids) // 3}+ per tenant) + 2 poison, {AGENTS} agents, "
                 f"noisy tenant: {sum(noise.statuses.values())} requests "
                 f"({noise.submitted} submissions)",
                 "faults: " + ", ".join(f"{kind} x{len(items)}" for kind, items in by_kind.items())
                 + f"; agents replaced after leaving on their own: {len(fleet.exits)} "
                 f"{Counter(code for _, code in fleet.exits) or ''}",
                 f"interruptions {interruptions}, steps re-run {redone} "
                 f"({redone / max(1, interruptions):.2f} per interruption)",
                 f"heartbeats {len(answered)}: p50 {percentile(answered, 0.5) * 1000:.0f} ms, "
                 f"p99 {beat_p99 * 1000:.0f} ms, max {max(answered, default=0) * 1000:.0f} ms; "
                 f"spacing p99 {gap_p99:.2f} s, max {max(spacing, default=0):.2f} s "
                 f"(lease {LEASE} s)",
                 f"webhooks {len(ours)} delivered; latency others p50 "
                 f"{percentile(latency['others'], 0.5):.2f} s p99 "
                 f"{percentile(latency['others'], 0.99):.2f} s max "
                 f"{max(latency['others'], default=0):.2f} s; slow receiver "
                 f"{len(latency['slow'])}, each answered after {SLOW_S:.0f} s, arrived at most "
                 f"{max(latency['slow'], default=0):.1f} s after the change",
                 f"storage-cut agent: {len(cut_claims)} claims, {cut_failures} node failures, "
                 f"0 charged" if cut_claims else "storage-cut agent: no claims"]
        for kind, items in by_kind.items():
            if kind.startswith("agent-"):
                # Separately: nodes taken away with a job (until another node claimed it: the
                # lease has to run out) and idle ones (until the fresh node polled).
                held = [fault for fault in items if fault.job_id]
                idle = [fault for fault in items if not fault.job_id]
                values = [fault.recovery for fault in held if fault.recovery is not None]
                lines.append(f"{kind}: {len(held)} with a job, re-claimed after " + ", ".join(
                    f"{value:.1f}" for value in values) + " s"
                    + (f" (median {percentile(values, 0.5):.1f}, max {max(values):.1f} s)"
                       if values else "")
                    + "".join(f"; {fault.note.strip('; ')}" for fault in held
                              if fault.recovery is None)
                    + f"; {len(idle)} idle, replacement polling after max "
                    f"{max((f.recovery or 0 for f in idle), default=0):.1f} s")
                continue
            values = [fault.recovery for fault in items if fault.recovery is not None]
            lines.append(f"recovery after {kind}: " + ", ".join(
                f"{value:.1f}" for value in values) + " s"
                + (f" (max {max(values):.1f} s)" if values else "")
                + "".join(f"; {fault.note.strip('; ')}" for fault in items
                          if fault.recovery is None))
        print("\n" + "\n".join(lines), flush=True)
        (root / "figures.txt").write_text("\n".join(lines) + "\n")
        assert not problems, "\n".join(problems[:30]) + f"\nlogs in {root}\nreplay: " \
            + replay_command()
    if not os.environ.get("KELPIE_SOAK_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


def inflict(fault: Fault, *, fleet: Fleet, apis, pg: PgCluster, seaweed: SeaweedFS) -> None:
    fault.started = time.monotonic()
    if fault.kind in ("agent-kill", "agent-term"):
        busy = [slot for slot, agent in enumerate(fleet.slots)
                if agent.state().get("status") == "running"]
        slot = (busy or list(range(len(fleet.slots))))[fault.target % len(busy or fleet.slots)]
        agent = fleet.slots[slot]
        fault.machine_id = agent.machine_id
        fault.job_id = agent.state().get("job_id")
        if fault.kind == "agent-kill":
            agent.kill_hard()
        else:
            agent.signal(signal.SIGTERM)
            try:
                agent.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                fault.note = "did not stop within 30 s; killed"
                agent.kill_hard()
        fault.note += f"exit {agent.process.returncode}"
        fault.ended = time.monotonic()
        fleet.replace(slot)
        fault.replacement = fleet.slots[slot].machine_id
    elif fault.kind == "api-kill":
        api = apis[fault.target]
        os.killpg(api.process.pid, signal.SIGKILL)
        api.process.wait()
        api.start()
        fault.ended = time.monotonic()
    elif fault.kind == "pg-restart":
        mode = ("fast", "immediate")[fault.target]
        fault.note = mode
        pg.restart(mode)
        fault.ended = time.monotonic()
    elif fault.kind == "seaweed-stop":
        seaweed.stop()
        time.sleep(10)
        fault.ended = time.monotonic()
        seaweed.start()
        fault.note = f"back after {time.monotonic() - fault.started:.1f} s"
    else:
        raise AssertionError(fault.kind)


def recovery(fault: Fault, exchanges) -> float | None:
    """Seconds from the end of the fault until the fleet did again what the fault stopped:
    the held job claimed by another node (from the kill: the lease has to run out first), the
    restarted API answering, a heartbeat accepted after the database restart, a completion
    (which needs the store) after SeaweedFS is back."""
    after = [x for x in exchanges if x.started >= fault.ended and 200 <= x.status < 300]
    if fault.kind in ("agent-kill", "agent-term"):
        if not fault.job_id:
            # The state file can lag a claim made a moment before the fault: the record says.
            claims = [x for x in exchanges if x.claimed and x.machine_id == fault.machine_id
                      and x.started < fault.started]
            if claims:
                held = claims[-1].job_id
                reported = [x for x in exchanges if x.job_id == held and x.machine_id
                            == fault.machine_id and x.path.endswith(("/completed", "/failed"))
                            and x.started < fault.started]
                fault.job_id = None if reported else held
        if fault.job_id:
            again = [x.started for x in exchanges if x.claimed and x.job_id == fault.job_id
                     and x.started >= fault.started]
            if again:
                return min(again) - fault.started
            done = [x for x in exchanges if x.job_id == fault.job_id and x.status in (200, 202)
                    and x.path.endswith(("/completed", "/failed"))]
            fault.note += f"; job {fault.job_id} not claimed again" + (
                f", reported {done[-1].path.rsplit('/', 1)[1]} by {done[-1].machine_id}"
                if done else "")
            return None
        # It was idle: until its replacement asked for work and got an answer.
        polls = [x.started + x.seconds for x in after if x.path == "/work"
                 and x.machine_id == fault.replacement]
        return min(polls) - fault.ended if polls else None
    if fault.kind == "api-kill":
        hits = [x.started + x.seconds for x in after if x.backend == fault.target]
    elif fault.kind == "pg-restart":
        hits = [x.started + x.seconds for x in after if x.path.endswith("/heartbeat")]
    else:
        hits = [x.started + x.seconds for x in after if x.path.endswith("/completed")]
    return min(hits) - fault.ended if hits else None
