"""The `kelpie` executable: size, `--version` cold start and idle memory, against their targets.

1. Size of dist/kelpie. Target <= 30 MB.
2. `kelpie --version` wall time from exec to exit, median of N runs. Every run is a cold start
   for the executable: both stages (staticx, then PyInstaller) unpack into a fresh temporary
   directory and delete it on exit. Target <= 0.5 s.
3. Resident memory of an idle agent: started against a loopback stand-in that answers `[]` to
   GET /work (and plays IMDS), read from /proc once it has polled a few times. Reported for the
   whole process tree (staticx loader, PyInstaller bootloader, interpreter), which is what the
   node pays. Target <= 60 MB.

The binary is built by build/build_agent.sh (which keeps an up-to-date dist/kelpie), or taken
from KELPIE_AGENT_BINARY.
"""

import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench import targets

REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 1000 * 1000  # decimal: the stricter reading of "30 MB"

SIZE_TARGET_MB = 30
START_TARGET_S = 0.5
RSS_TARGET_MB = 60
START_RUNS = int(os.environ.get("KELPIE_BENCH_START_RUNS", "21"))
SETTLE_S = 5.0


def binary() -> Path:
    given = os.environ.get("KELPIE_AGENT_BINARY")
    if given:
        return Path(given).resolve()
    started = time.monotonic()
    subprocess.run(["bash", str(REPO_ROOT / "build" / "build_agent.sh")], cwd=REPO_ROOT,
                   check=True, timeout=1800)
    print(f"build (or reuse) of dist/kelpie: {time.monotonic() - started:.1f} s")
    return REPO_ROOT / "dist" / "kelpie"


def row(label: str, value: float, unit: str, target: float) -> None:
    verdict = targets.verdict(label, value <= target)
    print(f"{label:<28} {value:8.3f} {unit:<3} target <= {target:g} {unit:<3} "
          f"ratio {value / target:5.2f}  {verdict}")


def cold_start_times(path: Path, runs: int) -> list[float]:
    env = {"PATH": "/usr/bin:/bin"}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(path), "--version"], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


class NoWorkServer:
    """Loopback HTTP: `[]` for GET /work, `{}` for everything else (the IMDS calls)."""

    def __init__(self):
        self.polls = 0

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                is_poll = self.command == "GET" and self.path.startswith("/work")
                outer.polls += is_poll
                body = json.dumps([] if is_poll else {}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += process_tree(int(child))
    return pids


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_rss(path: Path, workdir: Path) -> tuple[int, int, int]:
    """(tree RSS kB, interpreter RSS kB, polls seen) for an agent idling against loopback."""
    server = NoWorkServer()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "KELPIE_API_URL": server.url,
        "KELPIE_API_KEY": "bench",
        "KELPIE_IMDS_URL": server.url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "HEARTBEAT_INTERVAL_S": "0.5",
        "KELPIE_WORK_DIR": str(workdir),
        "KELPIE_STATE_FILE": str(workdir / "state.json"),
        "KELPIE_LOG_LEVEL": "WARNING",
    }
    agent = subprocess.Popen([str(path)], env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(SETTLE_S)
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode} while idle")
        sizes = [rss_kb(pid) for pid in process_tree(agent.pid)]
        return sum(sizes), max(sizes), server.polls
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        server.close()


def run() -> None:
    path = binary()
    size = path.stat().st_size
    row("size", size / MB, "MB", SIZE_TARGET_MB)

    times = cold_start_times(path, START_RUNS)
    row(f"--version median of {START_RUNS}", statistics.median(times), "s", START_TARGET_S)
    print(f"{'':<28} min {min(times):.3f} s, max {max(times):.3f} s")

    with tempfile.TemporaryDirectory(prefix="kelpie-bench-") as workdir:
        tree, interpreter, polls = idle_rss(path, Path(workdir))
    row("idle RSS, whole tree", tree * 1024 / MB, "MB", RSS_TARGET_MB)
    print(f"{'':<28} interpreter alone {interpreter / 1024:.1f} MiB; "
          f"{polls} polls in {SETTLE_S:g} s")


if __name__ == "__main__":
    run()
