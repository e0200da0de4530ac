"""Should the agent move large files with s3transfer? The measurement that decided (issue 14).

The design named s3transfer for multipart transfers; the agent moves them with its own code
(agent/storage.py: parallel upload_part calls, ranged GETs pinned with If-Match). This runs both
on one loopback SeaweedFS, on the same botocore client, part size and parts in flight
(KELPIE_PART_CONCURRENCY), for one large file each way, taking turns at going first, best of
KELPIE_BENCH_REPEATS. It is not part of `make bench` (nothing in the agent depends on the answer
at run time); run it again when either side changes:

    python -m bench.s3transfer_decision              # 1 GiB
    KELPIE_BENCH_BIG_MB=256 python -m bench.s3transfer_decision

The quiet-machine runs that decided are in docs/agent.md ("s3transfer: measured, and left out
of the agent"): the agent's downloads were 1.3-2.2x faster, uploads level, so the agent keeps
its own engine. s3transfer is pinned in requirements/dev.txt only, for this script.
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIG_MB = int(os.environ.get("KELPIE_BENCH_BIG_MB", "1024"))
REPEATS = int(os.environ.get("KELPIE_BENCH_REPEATS", "4"))


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run() -> None:
    from s3transfer.manager import TransferConfig, TransferManager

    from agent.config import load
    from agent.paths import SyncRule
    from agent.storage import Storage
    from tests.support.seaweed import SeaweedFS

    scratch = Path(tempfile.mkdtemp(prefix="kelpie-s3transfer-"))
    (scratch / "weed").mkdir()
    store = SeaweedFS(data_dir=scratch / "weed")
    best: dict[str, float] = {}
    try:
        store.start()
        os.environ.update(store.env)
        config = load({**os.environ, **store.env, "KELPIE_API_URL": "http://127.0.0.1:9",
                       "KELPIE_STATE_FILE": ""})
        storage = Storage(config)
        source = scratch / "up"
        source.mkdir()
        block = os.urandom(16 * 1024 * 1024)
        with open(source / "big.bin", "wb") as f:
            for i in range(max(1, BIG_MB // 16)):
                f.write(i.to_bytes(8, "little") + block[8:])
        size = (source / "big.bin").stat().st_size
        transfer = TransferManager(storage.client, TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            max_request_concurrency=config.part_concurrency))
        store.client().create_bucket(Bucket="decide")

        def agent_up():
            assert not storage.upload_files(SyncRule("decide", "agent/", source), ["big.bin"])

        def agent_down():
            storage.download_rule(SyncRule("decide", "agent/", scratch / "agent-down"))

        def s3t_up():
            transfer.upload(str(source / "big.bin"), "decide", "s3t/big.bin").result()

        def s3t_down():
            transfer.download("decide", "s3t/big.bin", str(scratch / "s3t-big.bin")).result()

        rows = {"agent upload": agent_up, "s3transfer upload": s3t_up,
                "agent download": agent_down, "s3transfer download": s3t_down}
        for repeat in range(REPEATS):
            for direction in ("upload", "download"):
                pair = [f"agent {direction}", f"s3transfer {direction}"]
                for name in pair if repeat % 2 == 0 else pair[::-1]:  # each goes first in turn
                    shutil.rmtree(scratch / "agent-down", ignore_errors=True)
                    (scratch / "s3t-big.bin").unlink(missing_ok=True)
                    # Start each from clean page cache: on this disk the writer that runs after
                    # another 1 GiB write waits on that one's writeback, whoever it is.
                    os.sync()
                    seconds = _timed(rows[name])
                    best[name] = min(seconds, best.get(name, float("inf")))
        transfer.shutdown()
        storage.close()
    finally:
        store.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ns3transfer vs the agent's own transfers ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs, SeaweedFS on loopback, 1 x {size / 2**20:.0f} MiB, "
          f"best of {REPEATS})")
    for direction in ("upload", "download"):
        agent_s, s3t_s = best[f"agent {direction}"], best[f"s3transfer {direction}"]
        print(f"{direction:<9} agent {agent_s:6.2f} s   s3transfer {s3t_s:6.2f} s   "
              f"agent is {s3t_s / agent_s:.2f}x s3transfer's speed")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    run()
