"""Where a job's files may live: the `local_path` rule, and the mapping between object keys and
local files.

`local_path` (one rule, used by the API at submission and by the agent before it touches a
directory): absolute paths are allowed, as the original accepts them (`/workspace/checkpoints`);
refused are relative paths that climb out of the work directory and the system's own
directories, which no job can mean and whose contents the agent must never download into,
upload from or clean. The agent also judges the real path, after symlinks, when it prepares the
directory.

A key is only ever turned into a path under the rule's local directory: `..` segments, absolute
paths, empty names and anything that resolves (through symlinks) outside the directory raise
`UnsafeKey`, which the caller logs and skips.
"""

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from agent.pattern import Pattern

GZIP_SUFFIX = ".gz"

# The system's own directories, with everything under them (and /lib, /lib32, /lib64, /libx32:
# any top-level name starting with "lib").
SYSTEM_TREES = ("/etc", "/usr", "/bin", "/sbin", "/proc", "/sys", "/dev", "/boot")
# Directories that hold the whole machine's users or scratch space: refused themselves, while
# a directory below them (/home/me/run, /var/lib/app, /tmp/job) is a job's own choice.
SYSTEM_ROOTS = ("/", "/root", "/home", "/var", "/tmp")
HOME_PREFIX = "~/"  # "~/x": x under the agent's home directory, as a shell reads it


class UnsafeKey(ValueError):
    pass


class UnsafeLocalPath(ValueError):
    """A local_path no job may use; the message says why."""


def normalize_absolute(path: str) -> str:
    """`//a/./b/../c/` → `/a/c`: the path as the kernel resolves it lexically (normpath keeps a
    leading `//`, which Linux reads as `/`)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def system_directory_problem(path: str) -> str | None:
    """Why an absolute path is one of the system's own directories, or None."""
    normal = normalize_absolute(path)
    if normal in SYSTEM_ROOTS:
        return f"is {normal} itself; give the job a directory of its own below it"
    top = "/" + normal.split("/")[1]
    if top in SYSTEM_TREES or top.startswith("/lib"):
        return f"is in {top}, one of the system's own directories"
    return None


def local_path_problem(local_path: str) -> str | None:
    """Why a job's `local_path` is refused, or None: the one rule both programs apply.

    Absolute: judged as the system directory it names, once normalised (`/usr/../etc` is
    `/etc`). `~` and `~/x`: the home directory (refused itself, as `/root` is) and paths under
    it. Relative: resolved against the work directory, and refused if it climbs out of it
    (`../x`, `a/../../b`).
    """
    if not isinstance(local_path, str) or not local_path.strip():
        return "must not be empty"
    if "\x00" in local_path:
        return "must not contain NUL characters"
    if local_path.startswith("/"):
        return system_directory_problem(local_path)
    if local_path == "~" or local_path.startswith(HOME_PREFIX):
        below = posixpath.normpath(local_path[len(HOME_PREFIX):] or ".")
        if below == ".":
            return "is the home directory itself; give the job a directory of its own below it"
        if below == ".." or below.startswith("../"):
            return "climbs out of the home directory"
        return None
    normal = posixpath.normpath(local_path)
    if normal == ".." or normal.startswith("../"):
        return "climbs out of the work directory (a relative path stays inside it)"
    return None


def resolve_local_path(local_path: str, work_dir: Path, home: Path | None = None) -> Path:
    """The directory a valid `local_path` names on this node (lexically normalised, symlinks
    not resolved); raises UnsafeLocalPath for one the rule refuses."""
    problem = local_path_problem(local_path)
    if problem:
        raise UnsafeLocalPath(problem)
    if local_path.startswith("/"):
        return Path(normalize_absolute(local_path))
    if local_path == "~" or local_path.startswith(HOME_PREFIX):
        base = home if home is not None else Path.home()
        return Path(os.path.normpath(base / local_path[len(HOME_PREFIX):]))
    return Path(os.path.normpath(work_dir / local_path))


@dataclass(frozen=True)
class SyncRule:
    """One entry of a job's sync block, with the local path resolved."""

    bucket: str
    prefix: str
    local_dir: Path
    pattern: Pattern | None = None  # agent.pattern: linear time, whatever the pattern
    compression: bool = False

    def matches(self, rel: str) -> bool:
        return self.pattern is None or bool(self.pattern.search(rel))

    def key_for(self, rel: str) -> str:
        key = self.prefix + rel
        return key + GZIP_SUFFIX if self.compression else key

    def rel_for_key(self, key: str) -> str:
        """The path relative to local_dir for an object key (still with any .gz suffix)."""
        if not key.startswith(self.prefix):
            raise UnsafeKey(f"key {key!r} is not under prefix {self.prefix!r}")
        return check_relative(key[len(self.prefix):])

    def local_path(self, rel: str) -> Path:
        return safe_join(self.local_dir, rel)

    def rel_for_path(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.local_dir)).as_posix()


def check_relative(rel: str) -> str:
    if not rel or rel.endswith("/"):
        raise UnsafeKey(f"{rel!r} names no file")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise UnsafeKey(f"{rel!r} is absolute or malformed")
    parts = rel.split("/")
    if any(part in ("..", ".", "") for part in parts):
        raise UnsafeKey(f"{rel!r} has '..', '.' or empty segments")
    if posixpath.normpath(rel) != rel:
        raise UnsafeKey(f"{rel!r} is not a normal path")
    return rel


def safe_join(root: Path, rel: str) -> Path:
    check_relative(rel)
    root_real = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(root_real, *rel.split("/")))
    if os.path.commonpath([root_real, candidate]) != root_real or candidate == root_real:
        raise UnsafeKey(f"{rel!r} resolves outside {root}")
    return Path(candidate)
