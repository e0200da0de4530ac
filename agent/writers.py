"""Who is writing the job's files, and whether that writer died: the writer gate.

A file closed by a process that is being killed is not a checkpoint: the kernel closes every
descriptor of a dying process, so inotify reports a torn file exactly like a finished one. The
gate answers, for a file about to be uploaded, one of three verdicts:

- WAIT: too fresh (the writer's death might not be visible yet) or still open for writing by
  the job's processes;
  its close event, or the next check, brings it back.
- DYING: written by a dying writer (the child was killed by a signal or exited non-zero
  shortly after the file was completed, or the file was open for writing when the agent
  forwarded a signal). Never uploaded: the object uploaded earlier stays. A program that
  handles the forwarded signal, saves and exits with 0 or 128 + signal is not dying: what it
  saved after the signal is uploaded.
- UPLOAD: anything else.

The job's processes are the child's session (the runner starts it with a new session), found in
/proc; open descriptors and their access modes come from /proc/<pid>/fd and fdinfo.
"""

import os
import threading
import time
from pathlib import Path

from agent.log import get_logger

log = get_logger(__name__)

UPLOAD, WAIT, DYING = "upload", "wait", "dying"
# A killed process closes its files and becomes a zombie within a millisecond or so (do_exit:
# files, then the exit notice): after this much time a death is visible to waitid.
SETTLE_S = 0.05
PROC = Path("/proc")


def session_pids(sid: int) -> list[int]:
    """Every live process of session `sid` (the child and what it started)."""
    pids = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = (PROC / entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces and parentheses).
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def files_open_for_writing(pids: list[int]) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every regular file these processes hold open for writing."""
    found = set()
    for pid in pids:
        fd_dir = PROC / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                flags = 0
                for line in (PROC / str(pid) / "fdinfo" / fd).read_text().splitlines():
                    if line.startswith("flags:"):
                        flags = int(line.split()[1], 8)
                if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
                    continue
                st = os.stat(fd_dir / fd)
            except (OSError, ValueError):
                continue
            found.add((st.st_dev, st.st_ino))
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Writers:
    """The writer gate for one attempt. Without an attached child (tests, or before the
    command starts) only the settling time applies."""

    def __init__(self, margin: float, quiet: float = SETTLE_S):
        self.quiet, self.margin = quiet, margin
        self.child = None
        self.signalled_at: float | None = None
        self.signum: int | None = None
        self.open_at_signal: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def attach(self, child) -> None:
        self.child = child

    def note_signal(self, signum: int) -> None:
        """Called just before the agent forwards `signum` to the child: remember what the
        child is in the middle of writing."""
        with self._lock:
            if self.signalled_at is None:
                self.signalled_at, self.signum = time.monotonic(), signum
            if self.child is not None and self.child.pid is not None:
                self.open_at_signal |= files_open_for_writing(session_pids(self.child.pid))

    def _open_now(self) -> set[tuple[int, int]]:
        if self.child is None or self.child.pid is None or self.child.exit_status() is not None:
            return set()
        return files_open_for_writing(session_pids(self.child.pid))

    def verdict(self, path: Path, completed_at: float, now: float | None = None) -> str:
        """UPLOAD, WAIT or DYING for a file completed (closed, renamed, found) at the
        monotonic time `completed_at`."""
        now = time.monotonic() if now is None else now
        if now < completed_at + self.quiet:
            return WAIT
        if self.child is None:
            return UPLOAD
        status = self.child.exit_status()
        identity = _identity(path)
        if status is not None:
            code, exited_at = status
            if self._graceful(code):
                return UPLOAD
            if identity is not None and identity in self.open_at_signal:
                return DYING
            window_start = exited_at - self.margin
            if self.signalled_at is not None:
                window_start = min(window_start, self.signalled_at - self.margin)
            return DYING if completed_at >= window_start else UPLOAD
        if self.signalled_at is not None and completed_at >= self.signalled_at - self.margin:
            return WAIT  # written while being told to stop: judged once the child exits
        if identity is not None and identity in self._open_now():
            return WAIT
        return UPLOAD

    def died_at(self) -> float | None:
        """If the child is dead and did not exit gracefully: the monotonic time from which
        its writes are suspect (the forwarded signal or the death, whichever came first)."""
        status = self.child.exit_status() if self.child is not None else None
        if status is None or self._graceful(status[0]):
            return None
        return min(status[1], self.signalled_at or status[1])

    def _graceful(self, code: int) -> bool:
        """Exit 0, or the exit a program makes after handling the signal the agent forwarded
        (128 + signal, by exit(), not killed by it): it chose to stop, after its last save.
        Killed by a signal (negative) or any other non-zero exit is a dying writer."""
        return code == 0 or (self.signum is not None and code == 128 + self.signum)

    def holds_open_under(self, directory: Path) -> bool:
        """True if the child's processes hold a file under `directory` open for writing."""
        open_files = self._open_now()
        if not open_files:
            return False
        for top, _, names in os.walk(directory):
            for name in names:
                if _identity(Path(top, name)) in open_files:
                    return True
        return False
