"""Directory checkpoints committed as one: the commit marker.

A top-level directory of a synced directory (`checkpoint-500/`) is one checkpoint *unit*: a
program writes it as one save. Its objects keep their names under the prefix, and beside them
the agent keeps one small object, `<prefix><unit>/.kelpie-commit.json`:

    {"format": 1, "state": "committed" | "open", "seq": <int>,
     "files": {"<name under the unit>": {"size": <int>, "etag": "<etag>"}, ...}}

`files` is the unit's last committed content: what the bucket held, file for file, when every
file of the save was durable. The marker is written last, after the files; a unit the agent
starts to upload for the first time gets an "open" marker with no files *before* its first
file, so a half-uploaded new directory is never mistaken for a complete one.

A restore downloads a unit only as its marker lists it, and only if every listed object is
still there with the listed size and ETag (S3 replaces an object atomically, so a matching
ETag means the very bytes that were committed). Anything else under the unit (files of a save
still in progress, leftovers of a deletion) is skipped and logged. A unit without a marker
was written by an older agent or by hand and is downloaded whole, as before.
"""

import json
import time

MARKER_NAME = ".kelpie-commit.json"
FORMAT = 1


def unit_of(rel: str) -> str | None:
    """The checkpoint unit a relative path belongs to: its top-level directory, or None for a
    top-level file (a single object, atomic by itself)."""
    head, sep, _ = rel.partition("/")
    return head if sep else None


def is_marker(rel_or_key: str) -> bool:
    return rel_or_key.rsplit("/", 1)[-1] == MARKER_NAME


def marker_key(prefix: str, unit: str) -> str:
    return f"{prefix}{unit}/{MARKER_NAME}"


def encode(state: str, files: dict[str, dict]) -> bytes:
    return json.dumps({"format": FORMAT, "state": state, "seq": time.time_ns(),
                       "files": files}, sort_keys=True).encode()


def decode(body: bytes) -> dict[str, dict] | None:
    """The committed files of a marker, or None if it cannot be read (then the unit is
    treated as uncommitted: skipped)."""
    try:
        marker = json.loads(body)
        files = marker["files"]
        if not isinstance(files, dict):
            return None
        return {str(name): {"size": int(entry["size"]), "etag": str(entry["etag"])}
                for name, entry in files.items()}
    except (ValueError, KeyError, TypeError):
        return None


def restorable(unit_objects: dict[str, dict], committed: dict[str, dict] | None) -> set[str]:
    """Which names of a unit a restore may download, given the unit's objects (name →
    {"size", "etag"}) and its marker's committed files (None: marker unreadable).
    Empty when the committed content is not all there, byte for byte."""
    if committed is None or not committed:
        return set()
    for name, entry in committed.items():
        present = unit_objects.get(name)
        if present is None or present["size"] != entry["size"] or present["etag"] != entry["etag"]:
            return set()
    return set(committed)
