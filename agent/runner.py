"""The job's command as a child process in its own process group.

Its own group (a new session) so that signals reach everything it started, and so that a Ctrl-C
aimed at the agent's terminal does not hit the child behind the agent's back: the agent decides
what the child gets. stdout/stderr are inherited, so the child's output streams through unchanged.
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from agent.log import get_logger

log = get_logger(__name__)


class ChildProcess:
    def __init__(self, command: str, arguments: list[str], env: dict[str, str], cwd: Path,
                 on_exit=lambda: None):
        """`on_exit()` is called (from the reaper thread) once the child has exited."""
        self.argv = [command, *arguments]
        self.on_exit = on_exit
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.exited = threading.Event()
        self._exit: tuple[int, float] | None = None  # (returncode, monotonic time first seen)
        self._exit_lock = threading.Lock()

    def start(self) -> None:
        """Raises OSError if the command cannot be started (not found, not executable)."""
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                        start_new_session=True, stdin=subprocess.DEVNULL)
        log.info("command started", extra={"pid": self.process.pid, "argv": self.argv})
        threading.Thread(target=self._reap, name="kelpie-child-wait", daemon=True).start()

    def _reap(self) -> None:
        code = self.process.wait()
        self._record_exit(code)
        self.exited.set()
        self.on_exit()

    def _record_exit(self, code: int) -> None:
        with self._exit_lock:
            if self._exit is None:
                self._exit = (code, time.monotonic())

    def exit_status(self) -> tuple[int, float] | None:
        """(returncode as Popen gives it: negative for a signal, monotonic time the exit was
        first seen), or None while the child runs. Peeks at a child that has died but is not
        reaped yet (waitid WNOWAIT), so the writer gate learns of a death without waiting
        for the reaper thread."""
        if self._exit is not None or self.process is None:
            return self._exit
        try:
            info = os.waitid(os.P_PID, self.process.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # just reaped by _reap: it records the status
            self.exited.wait(5)
            return self._exit
        if info is None or info.si_pid == 0:
            return None
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        self._record_exit(code)
        return self._exit

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
