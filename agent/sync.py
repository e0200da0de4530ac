"""Keeping one `sync.during` directory mirrored in its bucket while the job runs, as a
checkpoint store: a new checkpoint becomes visible only once all of it is durable, the
previous one goes only after that, and a file a dying writer left behind never replaces a good
object.

The watcher says which files are complete; after a short debounce (so a temp file renamed into
place is only sent under its final name) each one passes the writer gate (agent.writers: not
open for writing, writer not dying) and is uploaded unless its fingerprint matches
the last version sent or downloaded.

Every upload or deletion is an operation with a sequence number, taken when it is noticed. A
deletion runs only when no upload or directory commit numbered before it is still pending, so
keep-last-N rotation always leaves the newest complete checkpoint in the bucket; a deletion
that would follow an upload skipped as torn is dropped. A top-level directory is one
checkpoint unit, committed by a marker written once all its files are durable, none is open
for writing and the directory has not changed for KELPIE_COMMIT_QUIET_S (agent.commits).

A periodic rescan catches anything the watcher missed, and `finish()` does a last full pass
once the child has exited.
"""

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from agent import commits
from agent import log as agent_log
from agent.paths import SyncRule, UnsafeKey
from agent.storage import PARTIAL_SUFFIX, Fingerprint, Storage
from agent.watch import iter_files, make_watcher
from agent.writers import DYING, WAIT, Writers

log = agent_log.get_logger(__name__)

PUT, DELETE = "put", "delete"
RETRY_FAILED_S = 2.0  # a failed upload is tried again after this, keeping its place in order


@dataclass
class _Op:
    kind: str           # PUT or DELETE, as last noticed (the transfer looks at the disk again)
    seq: float          # order of noticing: a DELETE waits for every PUT/commit before it
    due: float          # monotonic time it may run (debounce, quiet period, retry)
    completed_at: float  # monotonic time the file was seen complete (for the writer gate)
    found: bool = False  # found by a scan rather than closed: checked for open writers
    prescanned: bool = False  # (DELETE) files written before it have been queued before it


@dataclass
class _Unit:
    """A top-level directory: one checkpoint (agent.commits)."""

    dirty_seq: int | None = None  # first change not yet committed
    last_change: float = 0.0
    marker_checked: bool = False  # we know whether the bucket has a marker for it
    committed: dict = field(default_factory=dict)  # the marker's files as we last wrote/read
    committing: bool = False
    stuck: bool = False  # its files differ from the bucket's (say, torn): no commit now


def _mono_of_mtime(fingerprint: Fingerprint) -> float:
    return time.monotonic() - max(0.0, time.time() - fingerprint.mtime_ns / 1e9)


class DirectorySync:
    def __init__(self, rule: SyncRule, storage: Storage, *, known: dict[str, Fingerprint],
                 watcher_mode: str = "auto", poll_interval: float = 0.2, debounce: float = 0.05,
                 rescan_interval: float = 5.0, upload_threads: int = 8,
                 may_delete: Callable[[], bool] = lambda: True,
                 writers: Writers | None = None, commit_quiet: float = 1.0):
        self.rule, self.storage = rule, storage
        # Deleting objects is the one destructive step: it waits until the job is known to be
        # ours (a recent heartbeat), so an agent that stalled and lost the job to another
        # machine cannot delete checkpoints the new holder relies on before it learns so.
        self.may_delete = may_delete
        self.writers = writers or Writers(margin=0.5)
        self.commit_quiet = commit_quiet
        self._finishing = False
        self.debounce, self.rescan_interval = debounce, rescan_interval
        self.known: dict[str, Fingerprint] = dict(known)  # what the bucket holds, as we last saw
        self.errors: dict[str, str] = {}
        self.skipped: dict[str, str] = {}  # rel → why it was not uploaded (dying writer)
        self.link_problems: dict[str, str] = {}  # symlinks that cannot be uploaded (last scan)
        self._seq = count(1)
        self._ops: dict[str, _Op] = {}  # waiting to run
        self._in_flight: dict[str, _Op] = {}
        self._again: dict[str, _Op] = {}  # changed again while transferring
        self._units: dict[str, _Unit] = {}
        self._unit_locks: dict[str, threading.Lock] = {}
        self._dying_seq: int | None = None  # first upload skipped as torn
        self._cond = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="kelpie-upload")
        rule.local_dir.mkdir(parents=True, exist_ok=True)
        self._watcher = make_watcher(watcher_mode, rule.local_dir, self._on_complete,
                                     self._on_deleted, self._on_overflow, poll_interval,
                                     on_found=self._on_found)
        self._scheduler = agent_log.job_thread(self._schedule_loop, name="kelpie-sync")
        self.uploads = 0

    # --- lifecycle ---

    def start(self) -> None:
        self._watcher.start()
        self._scheduler.start()
        self._queue_changed(min_age=0.0)  # files that were there before we watched

    def finish(self, timeout: float | None = None) -> dict[str, str]:
        """Final pass after the child exited: send every change now, wait for all uploads
        and commits. If `timeout` runs out first, deletions still waiting are dropped, never
        run out of order. Returns rel → error for files that could not be uploaded (empty:
        all safe)."""
        self._finishing = True
        self._watcher.stop()
        self._queue_changed(min_age=0.0, immediately=True)
        self._queue_deletions()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._ops or self._in_flight or self._commits_possible():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    for rel, op in list(self._ops.items()) + list(self._in_flight.items()):
                        if op.kind == PUT:
                            self.errors.setdefault(rel, "not uploaded before the time limit")
                        else:
                            log.warning("left an object in place: no time to delete it after "
                                        "the uploads before it",
                                        extra={"key": self.rule.key_for(rel)})
                    self._ops.clear()
                    break
                self._cond.wait(min(remaining, 0.5) if remaining is not None else 0.5)
            self._stopping = True
            self._cond.notify_all()
        self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False)
        return {**self.errors, **self.link_problems}

    def abandon(self) -> None:
        """Stop without a final pass (the job was canceled or taken away)."""
        self._watcher.stop()
        with self._cond:
            self._stopping = True
            self._ops.clear()
            self._cond.notify_all()
        self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- watcher callbacks ---

    def _rel(self, path: Path) -> str | None:
        if path.name.endswith(PARTIAL_SUFFIX) or path.name == commits.MARKER_NAME:
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
            now = time.monotonic()
            self._mark(rel, PUT, now + self.debounce, completed_at=now)

    def _on_found(self, path: Path) -> None:
        """A file already inside a directory that just appeared: maybe still being written."""
        rel = self._rel(path)
        fingerprint = Fingerprint.of(path)
        if rel is not None and fingerprint is not None:
            self._mark(rel, PUT, time.monotonic() + self.debounce,
                       completed_at=_mono_of_mtime(fingerprint), found=True)

    def _on_deleted(self, path: Path) -> None:
        try:
            prefix = self.rule.rel_for_path(path)
        except ValueError:
            return
        now = time.monotonic()
        for rel in list(self.known):
            if rel == prefix or rel.startswith(prefix + "/") or prefix == ".":
                self._mark(rel, DELETE, now + self.debounce, completed_at=now)

    def _on_overflow(self) -> None:
        self._queue_changed(min_age=0.0)
        self._queue_deletions()

    def _mark(self, rel: str, kind: str, due: float, completed_at: float,
              found: bool = False, seq: float | None = None) -> None:
        with self._cond:
            if self._stopping:
                return
            if rel in self._in_flight:
                # Transferring now: run again afterwards, keeping the earlier place in order.
                op = self._again.get(rel)
                if op is None:
                    self._again[rel] = _Op(kind, seq or next(self._seq), due, completed_at, found)
                else:
                    op.kind, op.completed_at, op.found = kind, completed_at, found
                    op.due = min(op.due, due)
            else:
                op = self._ops.get(rel)
                if op is None:
                    self._ops[rel] = op = _Op(kind, seq or next(self._seq), due, completed_at,
                                              found)
                else:
                    if kind == DELETE and op.kind == PUT:
                        op.seq = next(self._seq)  # a deletion is ordered from when it happened
                        op.prescanned = False
                    if kind != op.kind or not found:
                        op.completed_at = completed_at
                    op.kind, op.found = kind, found and op.found
                    op.due = min(op.due, due)
                if seq is not None:
                    op.seq = min(op.seq, seq)
            unit = commits.unit_of(rel)
            if unit is not None:
                state = self._units.setdefault(unit, _Unit())
                state.stuck = False
                state.last_change = time.monotonic()
                if state.dirty_seq is None:
                    state.dirty_seq = (self._ops.get(rel) or self._again[rel]).seq
            self._cond.notify_all()

    def _queue_changed(self, min_age: float, immediately: bool = False,
                       before_seq: float | None = None, newer_than: float | None = None) -> None:
        """Queue files whose fingerprint differs from the bucket's, if not modified within
        `min_age` seconds (a file still being written is left to its close event). With
        `before_seq`, only files last modified before the monotonic time `newer_than`, and
        numbered before `before_seq`: they were written before a deletion was noticed."""
        now_wall = time.time()
        due = time.monotonic() + (0 if immediately else self.debounce)
        problems: dict[Path, str] = {}
        for path in iter_files(self.rule.local_dir, problems):
            rel = self._rel(path)
            if rel is None:
                continue
            fingerprint = Fingerprint.of(path)
            if fingerprint is None or fingerprint == self.known.get(rel):
                continue
            if now_wall - fingerprint.mtime_ns / 1e9 < min_age:
                continue
            completed_at = _mono_of_mtime(fingerprint)
            if before_seq is not None and newer_than is not None and completed_at > newer_than:
                continue
            self._mark(rel, PUT, due, completed_at=completed_at, found=True,
                       seq=None if before_seq is None else before_seq - 0.5)
        if before_seq is not None:
            return  # a partial look: the link problems of the last full scan still stand
        links = {}
        for path, why in problems.items():
            rel = self.rule.rel_for_path(path)
            if self.rule.matches(rel):
                links[rel] = why
                if rel not in self.link_problems:
                    log.error("cannot upload a file", extra={"file": rel, "reason": why})
        self.link_problems = links  # a link fixed or removed since is no longer a problem

    def _queue_deletions(self) -> None:
        now = time.monotonic()
        for rel in list(self.known):
            if not os.path.lexists(self.rule.local_dir / rel):
                self._mark(rel, DELETE, now, completed_at=now)

    # --- ordering ---

    def _blocked(self, rel: str, op: _Op) -> bool:
        """A deletion waits for every upload and commit numbered before it (called with the
        lock held)."""
        if op.kind != DELETE:
            return False
        own_unit = commits.unit_of(rel)
        for other in [*self._ops.values(), *self._in_flight.values(), *self._again.values()]:
            if other.kind == PUT and other.seq < op.seq:
                return True
        for unit, state in self._units.items():
            if (unit != own_unit and state.dirty_seq is not None and state.dirty_seq < op.seq
                    and not state.stuck):
                return True
        return False

    def _busy_units(self) -> set[str | None]:
        """Units with an operation waiting or running (lock held)."""
        return {commits.unit_of(rel) for rel in [*self._ops, *self._in_flight, *self._again]}

    def _commits_possible(self) -> bool:
        """A unit whose changes are all transferred but not yet committed (lock held)."""
        busy = self._busy_units()
        return any(self._commit_ready(unit, state, busy, ignore_quiet=True)
                   for unit, state in self._units.items()) or any(
            state.committing for state in self._units.values())

    def _commit_ready(self, unit: str, state: _Unit, busy: set[str | None],
                      ignore_quiet: bool = False) -> bool:
        if state.dirty_seq is None or state.committing or state.stuck or unit in busy:
            return False
        died_at = self.writers.died_at()
        if died_at is not None and state.last_change + self.commit_quiet > died_at:
            # Changed shortly before the child was killed: the save may have stopped between
            # two files. Leave the previous commit in place.
            state.stuck = True
            return False
        quiet = ignore_quiet or self._finishing
        return quiet or time.monotonic() >= state.last_change + self.commit_quiet

    # --- the scheduler: hands due operations to the upload pool ---

    def _schedule_loop(self) -> None:
        next_rescan = time.monotonic() + self.rescan_interval
        while True:
            prescan = None
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                ready, wake = [], next_rescan
                for rel, op in list(self._ops.items()):
                    if op.kind == DELETE and not op.prescanned:
                        # Files written before this deletion was noticed go first, whatever
                        # order the watcher reported them in (polling sees deletions at once).
                        prescan = (op.seq, op.completed_at) if prescan is None else (
                            min(prescan[0], op.seq), max(prescan[1], op.completed_at))
                        op.prescanned = True
                        continue
                    if op.due > now:
                        wake = min(wake, op.due)
                        continue
                    if self._blocked(rel, op):
                        continue
                    ready.append((rel, op))
                for rel, op in ready:
                    del self._ops[rel]
                    self._in_flight[rel] = op
                busy = self._busy_units() if self._units else set()
                units = [unit for unit, state in self._units.items()
                         if self._commit_ready(unit, state, busy)]
                for unit in units:
                    self._units[unit].committing = True
                if not ready and not units and prescan is None:
                    pending_units = [s.last_change + self.commit_quiet
                                     for s in self._units.values()
                                     if s.dirty_seq is not None and not s.stuck]
                    wake = min([wake, *pending_units])
                    self._cond.wait(max(0.005, min(wake - now, 0.5)))
            if prescan is not None:
                try:
                    self._queue_changed(min_age=0.0, before_seq=prescan[0],
                                        newer_than=prescan[1])
                except Exception:
                    log.exception("scan before a deletion failed")
            for rel, op in ready:
                agent_log.submit(self._pool, self._transfer, rel, op)
            for unit in units:
                agent_log.submit(self._pool, self._commit, unit)
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + self.rescan_interval
                try:
                    self._queue_changed(min_age=self.rescan_interval)
                except Exception:
                    log.exception("rescan failed")

    # --- transfers ---

    def _transfer(self, rel: str, op: _Op) -> None:
        retry_at = None
        try:
            path = self.rule.local_dir / rel
            if not os.path.lexists(path):
                if rel in self.known:
                    if self._dying_seq is not None and op.seq > self._dying_seq:
                        log.warning("left an object in place: the newer file meant to replace "
                                    "it was written by a dying writer",
                                    extra={"key": self.rule.key_for(rel)})
                        return
                    if not self.may_delete():
                        if self._finishing:
                            log.warning("left an object in place: job ownership unconfirmed",
                                        extra={"key": self.rule.key_for(rel)})
                        else:
                            retry_at = time.monotonic() + 0.25
                        return
                    self._open_unit(rel)
                    self.storage.delete(self.rule, rel)
                    self.known.pop(rel, None)
                self.errors.pop(rel, None)
                return
            fingerprint = Fingerprint.of(path)
            if fingerprint is not None and fingerprint == self.known.get(rel):
                return
            verdict = self._gate(path, op, fingerprint)
            if verdict == WAIT:
                retry_at = time.monotonic() + max(0.05, self.writers.quiet / 2)
                return
            if verdict == DYING:
                self._skip_dying(rel, op)
                return
            if verdict is None:
                return  # open for writing: its close event brings it back
            self._open_unit(rel)
            changed: set[str] = set()
            failed = self.storage.upload_files(self.rule, [rel], on_done=self._uploaded,
                                               changed=changed)
            if changed:
                # Written to while we read it: its object stays as it was; the file goes
                # through the gate again (its writer may still hold it) when it settles.
                retry_at = time.monotonic() + self.debounce
            elif failed:
                self.errors[rel] = "upload failed after retries"
                retry_at = time.monotonic() + RETRY_FAILED_S
        except Exception as error:  # noqa: BLE001 - recorded; the final pass tries again
            log.warning("sync of a file failed", extra={"rel": rel, "error": str(error)})
            self.errors[rel] = str(error)
            retry_at = time.monotonic() + RETRY_FAILED_S
        finally:
            with self._cond:
                self._in_flight.pop(rel, None)
                again = self._again.pop(rel, None)
                if retry_at is not None and not self._stopping:
                    # Keeps its number: a deletion after it still waits for it.
                    op.due = retry_at
                    self._ops[rel] = op
                    if again is not None:
                        op.completed_at = again.completed_at
                elif again is not None and not self._stopping:
                    again.due = max(again.due, time.monotonic() + self.debounce)
                    self._ops[rel] = again
                self._cond.notify_all()

    def _gate(self, path: Path, op: _Op, fingerprint: Fingerprint | None) -> str | None:
        """The writer gate's verdict, None for a found file still open for writing."""
        completed_at = op.completed_at
        if op.found and fingerprint is not None:
            completed_at = max(completed_at, _mono_of_mtime(fingerprint))
        verdict = self.writers.verdict(path, completed_at)
        if verdict == WAIT and op.found and time.monotonic() >= completed_at + self.writers.quiet:
            return None
        return verdict

    def _skip_dying(self, rel: str, op: _Op) -> None:
        why = "written by a dying writer"
        log.warning(f"skipped {rel}: {why}", extra={"file": rel})
        self.skipped[rel] = why
        self.errors.pop(rel, None)
        with self._cond:
            self._dying_seq = op.seq if self._dying_seq is None else min(self._dying_seq, op.seq)
            unit = commits.unit_of(rel)
            if unit is not None and unit in self._units:
                self._units[unit].stuck = True

    def _uploaded(self, rel: str, fingerprint: Fingerprint) -> None:
        self.known[rel] = fingerprint
        self.errors.pop(rel, None)
        self.uploads += 1
        log.info("uploaded", extra={"bucket": self.rule.bucket, "key": self.rule.key_for(rel),
                                    "bytes": fingerprint.size})

    # --- checkpoint units ---

    def _unit_lock(self, unit: str) -> threading.Lock:
        with self._cond:
            return self._unit_locks.setdefault(unit, threading.Lock())

    def _open_unit(self, rel: str) -> None:
        """Before the first change to a unit: make sure the bucket has a marker for it, so a
        half-uploaded new directory never passes for one written by hand."""
        unit = commits.unit_of(rel)
        if unit is None:
            return
        with self._unit_lock(unit):
            with self._cond:
                state = self._units.setdefault(unit, _Unit())
            if state.marker_checked:
                return
            body = self.storage.get_marker(self.rule, unit)
            if body is not None:
                state.committed = commits.decode(body) or {}
            else:
                self.storage.put_marker(self.rule, unit, commits.encode("open", {}))
            state.marker_checked = True

    def _commit(self, unit: str) -> None:
        """Write the unit's marker once everything in it is durable: the moment the directory
        becomes a checkpoint a restore may use."""
        with self._cond:
            state = self._units[unit]
            dirty_seq = state.dirty_seq
        done = False
        try:
            with self._unit_lock(unit):
                local_dir = self.rule.local_dir / unit
                local: dict[str, Fingerprint | None] = {}
                if local_dir.is_dir():
                    for path in iter_files(local_dir):
                        rel = self._rel(path)
                        if rel is not None:
                            local[rel] = Fingerprint.of(path)
                if any(self.known.get(rel) != fp for rel, fp in local.items()):
                    with self._cond:
                        state.stuck = True  # something is not (or not yet) in the bucket
                    return
                if self.writers.holds_open_under(local_dir):
                    return  # the save is still going on: try again after the quiet period
                objects = self.storage.unit_objects(self.rule, unit)
                if not local:
                    if not objects:
                        # The directory is gone and so are its objects: its marker goes last.
                        if state.marker_checked or self.storage.get_marker(self.rule, unit):
                            self.storage.delete_marker(self.rule, unit)
                        with self._cond:
                            self._units.pop(unit, None)
                    # Objects left in place (a deletion dropped to keep the newest complete
                    # checkpoint): the marker still describes them; leave it.
                    done = True
                    return
                base = f"{unit}/"
                files = {}
                for rel in local:
                    name = self.rule.key_for(rel)[len(self.rule.prefix) + len(base):]
                    entry = objects.get(name)
                    if entry is None:
                        with self._cond:
                            state.stuck = True
                        return
                    files[name] = entry
                self.storage.put_marker(self.rule, unit, commits.encode("committed", files))
                state.committed, state.marker_checked = files, True
                done = True
                log.info("committed a checkpoint directory",
                         extra={"bucket": self.rule.bucket, "unit": unit, "files": len(files)})
        except Exception as error:  # noqa: BLE001 - tried again with the next change/final pass
            log.warning("commit of a checkpoint directory failed",
                        extra={"unit": unit, "error": str(error)})
        finally:
            with self._cond:
                state.committing = False
                if done and state.dirty_seq == dirty_seq:
                    state.dirty_seq = None
                elif not done:
                    state.last_change = time.monotonic()
                self._cond.notify_all()
