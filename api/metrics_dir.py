"""The directory where prometheus-client's multiprocess mode keeps each Sanic worker's counters
(see api/metrics.py). Kept apart from api/metrics.py because it must run before
prometheus-client is imported: the library chooses single- or multi-process values on import."""

import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_PREFIX = "kelpie-metrics-"


def prepare() -> str:
    """Point prometheus-client at an empty directory for this server's lifetime; the workers
    inherit it through the environment. An operator's PROMETHEUS_MULTIPROC_DIR is used and
    emptied (values from an earlier run would be summed in); else a private one is made."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
    else:
        _remove_orphans()
        directory = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")
        os.environ[MULTIPROC_ENV] = directory
    return directory


def _remove_orphans() -> None:
    """Private directories of servers that died without cleaning up (SIGKILL, a crash)."""
    parent = tempfile.gettempdir()
    for name in os.listdir(parent):
        pid = name.removeprefix(PRIVATE_PREFIX).split("-", 1)[0]
        if name.startswith(PRIVATE_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove(directory: str) -> None:
    """Delete the directory if this module made it (an operator's stays)."""
    if os.path.basename(directory).startswith(PRIVATE_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
