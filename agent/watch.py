"""Watching a directory tree for files that are complete (closed after writing or renamed into
place) and for files that disappear.

Linux inotify through ctypes where available (IN_CLOSE_WRITE / IN_MOVED_TO are exactly "this file
is complete", so a checkpoint is seen the moment it is closed); a size/mtime polling fallback
elsewhere. Both call `on_complete(path)` and `on_deleted(path)` from their own thread.
"""

import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from agent.log import get_logger, job_thread

log = get_logger(__name__)

IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF)
EVENT_HEADER = struct.Struct("iIII")

PathCallback = Callable[[Path], None]


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def iter_files(root: Path, problems: dict[Path, str] | None = None):
    """Every file under root that can be uploaded. A symlink is followed when its target
    stays inside root (a file: uploaded under the link's name; a directory: walked), so the
    link's data is saved as plain files. A symlink that points outside root, dangles or loops
    cannot be uploaded: it is put in `problems` (path → why), never silently skipped."""
    real_root = os.path.realpath(root)
    seen_dirs = {real_root}
    stack = [Path(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = Path(entry.path)
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    yield path
                continue
            target = os.path.realpath(path)
            if not _inside(target, real_root):
                if problems is not None:
                    problems[path] = f"symlink points outside the synced directory ({target})"
            elif os.path.isdir(target):
                if target in seen_dirs or _inside(real_root, target):
                    if problems is not None:
                        problems[path] = "symlink makes a directory loop"
                else:
                    seen_dirs.add(target)
                    stack.append(path)
            elif os.path.isfile(target):
                yield path
            elif problems is not None:
                problems[path] = "symlink target does not exist or is not a regular file"


class _Libc:
    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            # The C library this process already runs on. find_library("c") could pick the
            # host's (say musl on Alpine) and load a second libc into a frozen glibc process.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            cls._instance = libc
        return cls._instance


def inotify_available() -> bool:
    try:
        libc = _Libc.get()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError):
        return False
    if fd < 0:
        return False
    os.close(fd)
    return True


class InotifyWatcher:
    def __init__(self, root: Path, on_complete: PathCallback, on_deleted: PathCallback,
                 on_overflow: Callable[[], None], on_found: PathCallback | None = None):
        self.root = root
        self.on_complete, self.on_deleted, self.on_overflow = on_complete, on_deleted, on_overflow
        self.on_found = on_found or on_complete
        self.libc = _Libc.get()
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watches: dict[int, Path] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._stopped = False
        self._thread = job_thread(self._run, name=f"inotify {root}")
        self._add_tree(root, announce=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _add_watch(self, directory: Path) -> None:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch directory",
                            extra={"path": str(directory), "error": os.strerror(err)})
            return
        self.watches[wd] = directory

    def _add_tree(self, top: Path, announce: bool) -> None:
        """Watch `top` and everything below it. With `announce`, files already there (written
        before the watch existed) are reported as *found*, not complete: one may still be
        half-written by a writer whose close event will come now that the watch exists, so
        the sync checks it (writer gate) before uploading it."""
        for directory, subdirs, names in os.walk(top):
            self._add_watch(Path(directory))
            if announce:
                for name in names:
                    self.on_found(Path(directory, name))
            subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.fd, 256 * 1024)
            except BlockingIOError:
                continue
            try:
                self._dispatch(data)
            except Exception:  # a callback bug must not end watching
                log.exception("error handling a file event")

    def _dispatch(self, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size
            raw_name = data[offset:offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_Q_OVERFLOW:
                log.warning("file event queue overflowed; rescanning")
                self.on_overflow()
                continue
            if mask & IN_IGNORED:
                self.watches.pop(wd, None)
                continue
            directory = self.watches.get(wd)
            if directory is None:
                continue
            path = directory / os.fsdecode(raw_name) if raw_name else directory
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    self._add_tree(path, announce=True)
                elif mask & (IN_DELETE | IN_MOVED_FROM):
                    self.on_deleted(path)
            elif mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                self.on_complete(path)
            elif mask & (IN_DELETE | IN_MOVED_FROM) or (mask & IN_DELETE_SELF
                                                         and path == self.root):
                self.on_deleted(path)


class PollingWatcher:
    """Scans the tree every `interval`; a file is complete once its size and mtime held still
    for one whole interval."""

    def __init__(self, root: Path, on_complete: PathCallback, on_deleted: PathCallback,
                 interval: float):
        self.root, self.interval = root, interval
        self.on_complete, self.on_deleted = on_complete, on_deleted
        self._seen: dict[Path, tuple] = {}
        self._reported: dict[Path, tuple] = {}
        self._stop = threading.Event()
        self._thread = job_thread(self._run, name=f"poll {root}")
        self._scan(report=False)
        self._reported = dict(self._seen)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _scan(self, report: bool = True) -> None:
        current = {}
        for path in iter_files(self.root):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            current[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
        if report:
            for path, stamp in current.items():
                if self._seen.get(path) == stamp and self._reported.get(path) != stamp:
                    self._reported[path] = stamp
                    self.on_complete(path)
            for path in set(self._reported) - set(current):
                del self._reported[path]
                self.on_deleted(path)
        self._seen = current

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._scan()
            except Exception:
                log.exception("error scanning a watched directory")


def make_watcher(mode: str, root: Path, on_complete: PathCallback, on_deleted: PathCallback,
                 on_overflow: Callable[[], None], poll_interval: float,
                 on_found: PathCallback | None = None):
    if mode in ("auto", "inotify") and inotify_available():
        return InotifyWatcher(root, on_complete, on_deleted, on_overflow, on_found)
    if mode == "inotify":
        log.warning("inotify unavailable; polling instead")
    return PollingWatcher(root, on_complete, on_deleted, poll_interval)
