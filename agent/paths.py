"""Mapping between object keys and local files, refusing anything that would escape its directory.

A key is only ever turned into a path under the rule's local directory: `..` segments, absolute
paths, empty names and anything that resolves (through symlinks) outside the directory raise
`UnsafeKey`, which the caller logs and skips.
"""

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

GZIP_SUFFIX = ".gz"


class UnsafeKey(ValueError):
    pass


@dataclass(frozen=True)
class SyncRule:
    """One entry of a job's sync block, with the local path resolved."""

    bucket: str
    prefix: str
    local_dir: Path
    pattern: re.Pattern | None = None
    compression: bool = False

    def matches(self, rel: str) -> bool:
        return self.pattern is None or self.pattern.search(rel) is not None

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
