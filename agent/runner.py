"""The job's command as a child process in its own process group.

Its own group (a new session) so that signals reach everything it started, and so that a Ctrl-C
aimed at the agent's terminal does not hit the child behind the agent's back: the agent decides
what the child gets. stdout/stderr are inherited, so the child's output streams through unchanged.
"""

import os
import signal
import subprocess
import threading
from pathlib import Path

from agent.log import get_logger

log = get_logger(__name__)


class ChildProcess:
    def __init__(self, command: str, arguments: list[str], env: dict[str, str], cwd: Path):
        self.argv = [command, *arguments]
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.exited = threading.Event()

    def start(self) -> None:
        """Raises OSError if the command cannot be started (not found, not executable)."""
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                        start_new_session=True, stdin=subprocess.DEVNULL)
        log.info("command started", extra={"pid": self.process.pid, "argv": self.argv})
        threading.Thread(target=self._reap, name="kelpie-child-wait", daemon=True).start()

    def _reap(self) -> None:
        self.process.wait()
        self.exited.set()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process and self.exited.is_set() else None

    def signal_group(self, signum: int) -> None:
        if self.process is None or self.exited.is_set():
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return self.exited.wait(timeout)

    def stop(self, grace: float, first_signal: int = signal.SIGINT) -> int | None:
        """Escalate until the child is gone: first_signal, then SIGTERM, then SIGKILL, each
        given `grace` seconds. Returns the exit code."""
        ladder = [first_signal, signal.SIGTERM] if first_signal != signal.SIGTERM else [
            signal.SIGTERM]
        for signum in ladder:
            if self.exited.is_set():
                break
            log.info("signalling command", extra={"signal": signal.Signals(signum).name})
            self.signal_group(signum)
            if self.wait(grace):
                break
        else:
            if not self.exited.is_set():
                log.warning("command ignored its signals; killing it")
                self.signal_group(signal.SIGKILL)
                self.wait()
        # Whatever the leader did, leave no stragglers of its group behind.
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.returncode
