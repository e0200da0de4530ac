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
        directory = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
        os.environ[MULTIPROC_ENV] = directory
    return directory


def remove(directory: str) -> None:
    """Delete the directory if this module made it (an operator's stays)."""
    if os.path.basename(directory).startswith(PRIVATE_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
