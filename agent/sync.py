"""Keeping one `sync.during` directory mirrored in its bucket while the job runs.

The watcher says which files are complete; after a short debounce (so a temp file renamed into
place is only sent under its final name) each one is uploaded unless its fingerprint matches the
last version sent or downloaded. Deleted files delete their objects. A periodic rescan catches
anything the watcher missed, and `finish()` does a last full pass once the child has exited.
"""

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent import log as agent_log
from agent.paths import SyncRule, UnsafeKey
from agent.storage import PARTIAL_SUFFIX, Fingerprint, Storage
from agent.watch import iter_files, make_watcher

log = agent_log.get_logger(__name__)


class DirectorySync:
    def __init__(self, rule: SyncRule, storage: Storage, *, known: dict[str, Fingerprint],
                 watcher_mode: str = "auto", poll_interval: float = 0.2, debounce: float = 0.05,
                 rescan_interval: float = 5.0, upload_threads: int = 8,
                 may_delete: Callable[[], bool] = lambda: True):
        self.rule, self.storage = rule, storage
        # Deleting objects is the one destructive step: it waits until the job is known to be
        # ours (a recent heartbeat), so an agent that stalled and lost the job to another
        # machine cannot delete checkpoints the new holder relies on before it learns so.
        self.may_delete = may_delete
        self._finishing = False
        self.debounce, self.rescan_interval = debounce, rescan_interval
        self.known: dict[str, Fingerprint] = dict(known)  # what the bucket holds, as we last saw
        self.errors: dict[str, str] = {}
        self._due: dict[str, float] = {}  # rel → monotonic time it may be uploaded/deleted
        self._in_flight: set[str] = set()
        self._again: set[str] = set()  # changed again while uploading
        self._cond = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="kelpie-upload")
        rule.local_dir.mkdir(parents=True, exist_ok=True)
        self._watcher = make_watcher(watcher_mode, rule.local_dir, self._on_complete,
                                     self._on_deleted, self._on_overflow, poll_interval)
        self._scheduler = agent_log.job_thread(self._schedule_loop, name="kelpie-sync")
        self.uploads = 0

    # --- lifecycle ---

    def start(self) -> None:
        self._watcher.start()
        self._scheduler.start()
        self._queue_changed(min_age=0.0)  # files that were there before we watched

    def finish(self, timeout: float | None = None) -> dict[str, str]:
        """Final pass after the child exited: send every change now, wait for all uploads.
        Returns rel → error for files that could not be uploaded (empty: all safe)."""
        self._finishing = True
        self._watcher.stop()
        self._queue_changed(min_age=0.0, immediately=True)
        self._queue_deletions()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._due or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    for rel in list(self._due) + list(self._in_flight):
                        self.errors.setdefault(rel, "not uploaded before the time limit")
                    break
                self._cond.wait(remaining if remaining is not None else 1.0)
            self._stopping = True
            self._cond.notify_all()
        self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False)
        return dict(self.errors)

    def abandon(self) -> None:
        """Stop without a final pass (the job was canceled or taken away)."""
        self._watcher.stop()
        with self._cond:
            self._stopping = True
            self._due.clear()
            self._cond.notify_all()
        self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- watcher callbacks ---

    def _rel(self, path: Path) -> str | None:
        if path.name.endswith(PARTIAL_SUFFIX):
            return None
        try:
            rel = self.rule.rel_for_path(path)
            self.rule.local_path(rel)  # refuses anything escaping the directory
        except (UnsafeKey, ValueError):
            return None
        return rel if self.rule.matches(rel) else None

    def _on_complete(self, path: Path) -> None:
        rel = self._rel(path)
        if rel is not None:
            self._mark_due(rel, time.monotonic() + self.debounce)

    def _on_deleted(self, path: Path) -> None:
        try:
            prefix = self.rule.rel_for_path(path)
        except ValueError:
            return
        with self._cond:
            for rel in list(self.known):
                if rel == prefix or rel.startswith(prefix + "/") or prefix == ".":
                    self._due[rel] = time.monotonic() + self.debounce
            self._cond.notify_all()

    def _on_overflow(self) -> None:
        self._queue_changed(min_age=0.0)
        self._queue_deletions()

    def _mark_due(self, rel: str, when: float) -> None:
        with self._cond:
            if rel in self._in_flight:
                self._again.add(rel)
            else:
                self._due[rel] = min(when, self._due.get(rel, when))
            self._cond.notify_all()

    def _queue_changed(self, min_age: float, immediately: bool = False) -> None:
        """Queue files whose fingerprint differs from the bucket's, if not modified within
        `min_age` seconds (a file still being written is left to its close event)."""
        now_wall = time.time()
        due = time.monotonic() + (0 if immediately else self.debounce)
        for path in iter_files(self.rule.local_dir):
            rel = self._rel(path)
            if rel is None:
                continue
            fingerprint = Fingerprint.of(path)
            if fingerprint is None or fingerprint == self.known.get(rel):
                continue
            if now_wall - fingerprint.mtime_ns / 1e9 < min_age:
                continue
            self._mark_due(rel, due)

    def _queue_deletions(self) -> None:
        with self._cond:
            for rel in list(self.known):
                if not os.path.lexists(self.rule.local_dir / rel):
                    self._due[rel] = time.monotonic()
            self._cond.notify_all()

    # --- the scheduler: hands due files to the upload pool ---

    def _schedule_loop(self) -> None:
        next_rescan = time.monotonic() + self.rescan_interval
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                ready = [rel for rel, when in self._due.items() if when <= now]
                for rel in ready:
                    del self._due[rel]
                    self._in_flight.add(rel)
                if not ready:
                    wake = min([*self._due.values(), next_rescan]) - now
                    self._cond.wait(max(0.005, wake))
            for rel in ready:
                agent_log.submit(self._pool, self._transfer, rel)
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + self.rescan_interval
                try:
                    self._queue_changed(min_age=self.rescan_interval)
                except Exception:
                    log.exception("rescan failed")

    def _transfer(self, rel: str) -> None:
        try:
            path = self.rule.local_dir / rel
            if not os.path.lexists(path):
                if rel in self.known:
                    if not self.may_delete():
                        if self._finishing:
                            log.warning("left an object in place: job ownership unconfirmed",
                                        extra={"key": self.rule.key_for(rel)})
                        else:
                            with self._cond:
                                self._again.add(rel)  # try again shortly (see finally)
                        return
                    self.storage.delete(self.rule, rel)
                    self.known.pop(rel, None)
                self.errors.pop(rel, None)
                return
            fingerprint = Fingerprint.of(path)
            if fingerprint is not None and fingerprint == self.known.get(rel):
                return
            failed = self.storage.upload_files(self.rule, [rel], on_done=self._uploaded)
            if failed:
                self.errors[rel] = "upload failed after retries"
        except Exception as error:  # noqa: BLE001 - recorded; the final pass tries again
            log.warning("sync of a file failed", extra={"rel": rel, "error": str(error)})
            self.errors[rel] = str(error)
        finally:
            with self._cond:
                self._in_flight.discard(rel)
                if rel in self._again:
                    self._again.discard(rel)
                    self._due[rel] = time.monotonic() + max(self.debounce, 0.25)
                self._cond.notify_all()

    def _uploaded(self, rel: str, fingerprint: Fingerprint) -> None:
        self.known[rel] = fingerprint
        self.errors.pop(rel, None)
        self.uploads += 1
        log.info("uploaded", extra={"bucket": self.rule.bucket, "key": self.rule.key_for(rel),
                                    "bytes": fingerprint.size})
