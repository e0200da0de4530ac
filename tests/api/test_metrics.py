"""/metrics: Prometheus text, right when two Sanic worker processes share the counting, and
only for the administrator unless KELPIE_METRICS_PUBLIC=1."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.api.jobdefs import sync_job
from tests.support.api_process import REPO_ROOT, ApiProcess
from tests.support.net import free_port, wait_until

GROUP = "metrics-group"


@pytest.fixture(scope="module")
def two_workers(database_url, api_server, tmp_path_factory):
    multiproc_dir = tmp_path_factory.mktemp("metrics") / "prom"
    server = api_server(database_url, workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)})
    server.multiproc_dir = multiproc_dir
    return server


def scrape(api, key=None, send_key=True) -> dict:
    request = urllib.request.Request(api.url + "/metrics")
    if send_key:
        request.add_header("X-Kelpie-Key", key or api.admin_key)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_are_summed_over_both_worker_processes(two_workers, request):
    api = two_workers
    key = api.create_user(request.node.name)
    before = scrape(api)
    jobs = [api.request("POST", "/jobs", sync_job(container_group_id=GROUP), key=key)[1]
            for _ in range(6)]
    machines = [f"metrics-m{index}" for index in range(6)]
    for machine in machines:
        assert api.request("GET", f"/work?machine_id={machine}&container_group_id={GROUP}",
                           key=key)[1]
    held = {}
    for job in jobs:
        held[job["id"]] = api.request("GET", f"/jobs/{job['id']}", key=key)[1]["machine_id"]
    # 60 heartbeats, 30 taken by each worker process for certain: while one process is
    # stopped (SIGSTOP) only the other can accept connections.
    first, second = worker_pids(api)
    beats = list(held.items()) * 5
    for stopped, count in ((first, 30), (second, 30)):
        os.kill(stopped, signal.SIGSTOP)
        try:
            for job_id, machine in beats[:count]:
                assert api.request("POST", f"/jobs/{job_id}/heartbeat", {"machine_id": machine},
                                   key=key) == (200, {"status": "running"})
        finally:
            os.kill(stopped, signal.SIGCONT)
    failed_id, failed_machine = next(iter(held.items()))
    assert api.request("POST", f"/jobs/{failed_id}/failed", {"machine_id": failed_machine,
                                                              "exit_code": 2}, key=key)[0] == 202

    # Every scrape, whichever process answers it, shows every process's counts.
    for _ in range(6):
        after = scrape(api)
        assert value(after, "kelpie_claims_total") - value(before, "kelpie_claims_total") == 6
        assert (value(after, "kelpie_heartbeats_total")
                - value(before, "kelpie_heartbeats_total")) == 60
        assert (value(after, "kelpie_attempt_failures_total")
                - value(before, "kelpie_attempt_failures_total")) == 1
        assert value(after, "kelpie_jobs", status="running", container_group_id=GROUP) == 5
        assert value(after, "kelpie_jobs", status="pending", container_group_id=GROUP) == 1
        heartbeat_route = value(after, "kelpie_http_request_duration_seconds_count",
                                method="POST", route="/jobs/<job_id:uuid>/heartbeat",
                                status="200")
        assert heartbeat_route >= 60
    # Each process counted its own 30 in its own file; the scrapes above summed them (one
    # process's registry alone would have shown 30).
    for pid in (first, second):
        values = MmapedDict.read_all_values_from_file(str(api.multiproc_dir / f"counter_{pid}.db"))
        assert [count for key, count, *_ in values if "kelpie_heartbeats_total" in key] == [30]


def worker_pids(api) -> list[int]:
    """The server's worker processes: its children that hold the listening socket."""
    port = f"{api.port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port}") and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    children = Path(f"/proc/{api.process.pid}/task/{api.process.pid}/children").read_text()
    workers = []
    for pid in map(int, children.split()):
        try:
            links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            workers.append(pid)
    assert len(workers) == 2, (workers, children)
    return sorted(workers)


def test_interruptions_and_webhook_backlog(two_workers, request):
    api = two_workers
    key = api.create_user(request.node.name)
    before = scrape(api)
    # A webhook to a closed loopback port: the notification stays pending.
    hook = f"http://127.0.0.1:{free_port()}/hook"
    job = api.request("POST", "/jobs", sync_job(container_group_id="interrupt", webhook=hook,
                                                heartbeat_interval=1), key=key)[1]
    path = "/work?container_group_id=interrupt&machine_id="
    assert api.request("GET", path + "first", key=key)[1][0]["id"] == job["id"]
    wait_until(lambda: api.request("GET", path + "second", key=key)[1], timeout=30)
    after = scrape(api)
    assert (value(after, "kelpie_interruptions_total")
            - value(before, "kelpie_interruptions_total")) == 1
    assert value(after, "kelpie_webhook_backlog") >= 1
    assert value(after, "kelpie_webhook_oldest_undelivered_seconds") > 0


def test_only_the_administrator_may_scrape(two_workers, request):
    key = two_workers.create_user(request.node.name)
    for kwargs, code in (({"key": key}, 403), ({"send_key": False}, 401),
                         ({"key": "wrong"}, 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(two_workers, **kwargs)
        assert refused.value.code == code


def test_public_switch_opens_it(tmp_path):
    with ApiProcess(f"sqlite:///{tmp_path}/kelpie.db",
                    env={"KELPIE_METRICS_PUBLIC": "1"}) as api:
        samples = scrape(api, send_key=False)
        assert ("kelpie_webhook_backlog", ()) in samples


def test_grafana_example_uses_only_metrics_we_export(two_workers):
    dashboard = json.loads((REPO_ROOT / "examples" / "grafana-dashboard.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in re.findall(r"kelpie_[a-z_]+", target["expr"])}
    assert len(wanted) >= 9
    two_workers.request("POST", "/jobs", sync_job())  # a job to count, a request timed
    exported = {name for name, _ in scrape(two_workers)}
    assert wanted <= exported, wanted - exported


def test_private_metrics_directory_is_removed_and_orphans_cleared(tmp_path, monkeypatch):
    from api import metrics_dir

    # prepare() sets the variable itself; put the environment back however the test ends.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    os.environ.pop(metrics_dir.MULTIPROC_ENV, None)
    monkeypatch.setattr(metrics_dir.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{metrics_dir.PRIVATE_PREFIX}{dead.pid}-abc"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"x")
    foreign = tmp_path / f"{metrics_dir.PRIVATE_PREFIX}{os.getpid()}-live"  # a live server's
    foreign.mkdir()

    directory = metrics_dir.prepare()
    assert os.environ[metrics_dir.MULTIPROC_ENV] == directory
    assert not orphan.exists() and foreign.exists()
    metrics_dir.remove(directory)
    assert not Path(directory).exists()
    # An operator's directory is emptied at start and kept at the end.
    own = tmp_path / "operator"
    own.mkdir()
    (own / "counter_7.db").write_bytes(b"old")
    os.environ[metrics_dir.MULTIPROC_ENV] = str(own)
    assert metrics_dir.prepare() == str(own) and list(own.iterdir()) == []
    metrics_dir.remove(str(own))
    assert own.exists()
