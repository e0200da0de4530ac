"""The state file (`KELPIE_STATE_FILE`): what the agent is doing right now, as JSON.

Written atomically (temp file + rename) by a background thread at most a few times a second, so
hundreds of small transfers do not mean hundreds of writes.

It holds the running job, `environment` included, i.e. the job's secrets: every temporary file
is created 0600 (mkstemp), so the state file is private from its first byte whatever the umask,
and each write has a temporary name of its own. Writes are serialised and each one takes its
snapshot inside the write lock, so the writer thread and close() can never tear the file, lose
it, or put an older state over a newer one.
"""

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from agent.log import get_logger
from agent.storage import TransferListener

log = get_logger(__name__)
WRITE_EVERY_S = 0.25


class StateFile(TransferListener):
    def __init__(self, path: Path | None, machine_id: str):
        self.path = path
        self._lock = threading.Lock()  # guards _state
        self._write_lock = threading.Lock()  # one writer at a time
        self._dirty = threading.Event()
        self._closed = False
        self._state = {
            "pid": os.getpid(), "machine_id": machine_id, "status": "starting",
            "job_id": None, "job": None, "exit_code": None,
            "uploads": {}, "downloads": {}, "updated": None,
        }
        self._thread = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._writer, name="kelpie-state",
                                            daemon=True)
            self._thread.start()
            self._dirty.set()

    def update(self, **fields) -> None:
        with self._lock:
            self._state.update(fields)
        self._dirty.set()

    def started(self, kind: str, bucket: str, key: str, size: int | None) -> None:
        with self._lock:
            self._state[kind + "s"][f"s3://{bucket}/{key}"] = {
                "size": size, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._dirty.set()

    def finished(self, kind: str, bucket: str, key: str) -> None:
        with self._lock:
            self._state[kind + "s"].pop(f"s3://{bucket}/{key}", None)
        self._dirty.set()

    def _writer(self) -> None:
        while not self._closed:
            self._dirty.wait()
            self._dirty.clear()
            self.flush()
            time.sleep(WRITE_EVERY_S)

    def flush(self) -> None:
        if self.path is None:
            return
        with self._write_lock:
            with self._lock:
                self._state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                text = json.dumps(self._state, indent=2, default=str)
            self._replace_with(text)

    def _replace_with(self, text: str) -> None:
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                       suffix=".tmp")  # O_EXCL, mode 0600
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except OSError as error:
            log.warning("cannot write the state file",
                        extra={"path": str(self.path), "error": str(error)})
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._dirty.set()
        self.flush()
