"""Stopping the processes tests start: one rule for every API, SeaweedFS and agent process."""

import os
import signal
import subprocess
from collections.abc import Callable


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a whole process group that may already be gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_process(process: subprocess.Popen | None, *, timeout: float = 15, group: bool = False,
                 escalate: Callable[[], None] | None = None) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; its exit code (a
    process that had to be killed answers -9, so a test that expects a clean stop notices).

    `group`: signal the process group it leads (started with start_new_session) rather than the
    process alone, so that children such as Sanic's workers or weed's servers go with it. An
    agent is signalled alone, as `docker stop` signals PID 1, and stops its job itself.
    `escalate`: what to do instead of the SIGKILL when it does not stop in time."""
    if process is None:
        return None
    if process.poll() is None:
        if group:
            kill_group(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if escalate is not None:
                escalate()
            elif group:
                kill_group(process.pid)
            else:
                process.kill()
            process.wait()
    return process.returncode
