"""S3 transfers: parallel files, parallel parts for large ones, streaming gzip.

One `Storage` per agent: one botocore client, one file pool and one part pool shared by every
transfer, so connections are reused and `KELPIE_TRANSFER_CONCURRENCY` /
`KELPIE_PART_CONCURRENCY` bound the whole agent. Large compressed uploads are gzip-compressed
while they stream out of the file, and compressed downloads are decompressed while they stream
in, so no temporary copy is ever written.

s3transfer was the first engine here; measured against s5cmd on SeaweedFS its per-file
machinery (extra threads, a HEAD per download, one IO thread writing every chunk) cost up to
half the throughput, so transfers are now plain requests on our own pools (see
docs/agent.md, "Storage").
"""

import contextlib
import gzip
import os
import stat
import threading
import time
import xml.etree.ElementTree as ElementTree
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from agent import commits, retry
from agent import log as agent_log
from agent.config import Config
from agent.paths import GZIP_SUFFIX, SyncRule, UnsafeKey, check_relative, safe_join
from agent.s3fast import FastS3, S3RequestError

log = agent_log.get_logger(__name__)

PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # transfers this large log their progress
PROGRESS_EVERY_S = 2.0
READ_CHUNK = 1024 * 1024
# Bytes per pwrite of a ranged GET's chunk into its file. Not the whole 1 MiB chunk: on this
# kernel (6.18, ext4 with large folios) a 1 MiB write makes the page cache allocate 1 MiB
# folios, and on the VM the bench runs on, freshly handed out high-order pages were often
# not yet backed by the host, so copying into them cost 2.5-4 s of system time per GiB
# (perf: copy_folio_from_iter_atomic 60-70 %, plus 16 writers spinning on the inode lock
# meanwhile). 32 KiB writes, as s5cmd's, get small folios: 0.6-0.8 s (docs/agent.md,
# "The 1 GiB download"). Streamed single GETs (_write_all) write in the same pieces.
WRITE_PIECE = 32 * 1024
PARTIAL_SUFFIX = ".kelpie-partial"
MAX_PARTS = 10000  # S3's limit on parts per multipart upload
# Keys in the first listing page of a download; later pages take the store's maximum.
FIRST_PAGE_KEYS = 100
LIST_PAGE_KEYS = 1000
# Small PUTs on the lean path hold the file in memory: cap it so 32 of them stay modest.
FAST_PUT_MAX_BYTES = 4 * 1024 * 1024
# How long small PUTs wait for the first PUT into a bucket this agent has not written to yet
# (see Storage._first_write): SeaweedFS answers PUTs that arrive while it creates a new
# bucket's first volume about 1 s late, so waiting longer than that never gains anything.
FIRST_WRITE_WAIT_S = 1.0


@dataclass(frozen=True)
class Fingerprint:
    """What we know of a local file's version: equal fingerprints mean "already transferred"."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "Fingerprint | None":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class TransferFailed(Exception):
    pass


class PartFailed(TransferFailed):
    """A part of a large object (a ranged GET, an uploaded part) failed on every one of its
    own attempts: the object as a whole is not tried again, which would multiply them."""


class DownloadCanceled(Exception):
    """The job was lost while its inputs came down: stop before its directories are cleaned."""


class ObjectChanged(Exception):
    """The object was replaced while it was being read: the file is restarted."""


class FileChanged(Exception):
    """The file was written to while it was being uploaded: the upload is abandoned before the
    object is replaced, so a good object never gives way to a mix of two versions."""


def _unchanged(fd: int, before: os.stat_result) -> bool:
    now = os.fstat(fd)
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
        before.st_size, before.st_mtime_ns, before.st_ctime_ns)


class StableReader:
    """A file body for a single PUT that refuses to finish if the file changed while it was
    read: the check runs before the last bytes are handed over, so the store never receives a
    whole body and never replaces the object."""

    def __init__(self, file, before: os.stat_result):
        self._file, self._before = file, before

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        at_end = (size is None or size < 0 or len(data) < size
                  or self._file.tell() >= self._before.st_size)
        if at_end and (self._file.tell() != self._before.st_size
                       or not _unchanged(self._file.fileno(), self._before)):
            raise FileChanged(self._file.name)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _create_partial(partial: str) -> int:
    """A new, empty partial file, opened for writing. O_EXCL: never a file (or a symlink
    planted under that name) that already exists, so the bytes go into a file of our own;
    a partial file left by an interrupted run is removed and created afresh."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(partial, flags, 0o666)  # 0o666 & ~umask, as open() would
    except FileExistsError:
        os.unlink(partial)
        return os.open(partial, flags, 0o666)


def _path_under(root: str, rel: str) -> str:
    """The real path of `rel` under the real directory `root`, as paths.safe_join judges it
    (UnsafeKey for anything that would land outside), for one lstat per component of `rel`
    instead of resolving every component of root and path again for each of hundreds of
    files: a component that is a symlink sends the path to safe_join itself."""
    check_relative(rel)
    path = root
    for part in rel.split("/"):
        path = f"{path}/{part}"
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return str(safe_join(Path(root), rel))
        except OSError:
            # Not there (yet), or below something that is not a directory: as realpath
            # does, the rest of the path is taken as it is written.
            return root + "/" + rel
    return path


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """All of `data` written at `offset` with os.pwrite, WRITE_PIECE bytes per call (see
    WRITE_PIECE), a short write continued where it stopped; returns the bytes written."""
    view = memoryview(data)
    size = len(view)
    done = 0
    while done < size:
        written = os.pwrite(fd, view[done:done + WRITE_PIECE], offset + done)
        if not written:
            raise OSError(f"pwrite wrote nothing at offset {offset + done}")
        done += written
    return size


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written, WRITE_PIECE bytes per call at most (see
    WRITE_PIECE: the streamed 1 MiB chunks of a single GET meet the same large folios)."""
    if len(data) <= WRITE_PIECE:
        written = os.write(fd, data)
        if written == len(data):
            return
        view = memoryview(data)[written:]
    else:
        view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]):]


# S3 error codes that mean "busy, ask again", whatever their HTTP status.
THROTTLING_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout",
                    "RequestLimitExceeded", "TooManyRequestsException"}


def transient(error: BaseException) -> bool:
    """Whether asking again may help (what botocore's standard retry mode retries): no
    answer, a 5xx or 429, throttling. Not a 4xx: a missing key or a refused credential stays
    so."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = error.response.get("Error", {}).get("Code")
        return status >= 500 or status == 429 or code in THROTTLING_CODES
    if isinstance(error, S3RequestError):
        return error.status >= 500 or error.status == 429
    return isinstance(error, (BotoConnectionError, HTTPClientError, Urllib3Error))


def _precondition_failed(error: Exception) -> bool:
    if isinstance(error, S3RequestError):
        return error.status == 412
    if isinstance(error, ClientError):
        meta = error.response.get("ResponseMetadata", {})
        return (meta.get("HTTPStatusCode") == 412
                or error.response.get("Error", {}).get("Code") == "PreconditionFailed")
    return False


class TransferListener:
    """Told about transfers as they start and finish (the state file listens)."""

    def started(self, kind: str, bucket: str, key: str, size: int | None) -> None: ...

    def finished(self, kind: str, bucket: str, key: str) -> None: ...


def make_s3_client(config: Config, session=None):
    session = session or botocore.session.get_session()
    addressing = config.s3_addressing_style
    if addressing == "auto":
        # Custom endpoints (SeaweedFS, MinIO) rarely have wildcard DNS: path style always works.
        addressing = "path" if config.s3_endpoint_url else "auto"
    boto_config = BotoConfig(
        region_name=config.s3_region,
        max_pool_connections=config.transfer_concurrency + config.part_concurrency + 4,
        # One attempt per call: every call is retried by exactly one loop of ours instead
        # (docs/agent.md, "Retries"), so attempts never multiply.
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": addressing},
        connect_timeout=10,
        read_timeout=60,
        # CRC checksums on every request cost CPU and not every S3-compatible store accepts them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="kelpie-agent",
    )
    return session.create_client(
        "s3", endpoint_url=config.s3_endpoint_url, config=boto_config,
        verify=config.s3_ca_bundle if config.s3_ca_bundle else None)


def _fast_client(config: Config, session) -> FastS3 | None:
    """The lean client for small objects, where it applies: a custom endpoint addressed
    path-style (SeaweedFS, MinIO, R2, ...) and credentials to sign with."""
    if not config.fast_small_transfers or not config.s3_endpoint_url:
        return None
    if config.s3_addressing_style == "virtual":
        return None
    credentials = session.get_credentials()
    if credentials is None:
        return None
    return FastS3(config.s3_endpoint_url, config.s3_region, credentials,
                  pool_size=config.transfer_concurrency + 4, ca_bundle=config.s3_ca_bundle)


class _Answer(NamedTuple):
    """A GET's answer as Storage uses it, whichever client fetched it."""

    etag: str | None
    encoding: str
    length: int | None
    read: Callable
    done: Callable


def _read_whole(f, before: os.stat_result) -> bytes:
    """The whole file, if it is still the version `before` describes (else FileChanged)."""
    data = f.read()
    if len(data) != before.st_size or not _unchanged(f.fileno(), before):
        raise FileChanged(f.name)
    return data


class _BotocoreWire:
    """The requests that move objects and list them, all through botocore: any endpoint, TLS,
    AWS itself. Storage picks this or _LeanWire once, at start; nothing after branches."""

    def __init__(self, client, call: Callable):
        self.client = client
        self._call = call

    def list_page(self, bucket: str, prefix: str, max_keys: int,
                  token: str | None) -> tuple[list[dict], str | None]:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if token:
            kwargs["ContinuationToken"] = token
        page = self._call(self.client.list_objects_v2, **kwargs)
        token = page.get("NextContinuationToken")
        return page.get("Contents", []), (token if page.get("IsTruncated") and token else None)

    def get(self, bucket: str, key: str, etag: str | None,
            byte_range: tuple[int, int] | None) -> _Answer:
        extra = {"IfMatch": etag} if etag else {}
        if byte_range:
            extra["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        answer = self.client.get_object(Bucket=bucket, Key=key, **extra)
        length = answer.get("ContentLength")
        return _Answer(answer.get("ETag"), answer.get("ContentEncoding", ""),
                       int(length) if length is not None else None,
                       answer["Body"].read, answer["Body"].close)

    def put_small(self, bucket: str, key: str, f, before: os.stat_result,
                  compress: bool) -> None:
        """One PUT of a file below the multipart threshold; the bytes sent are one version of
        it: streamed through StableReader, or (compressed, which bounds nothing less) read
        into memory and checked."""
        if not compress:
            self.client.put_object(Bucket=bucket, Key=key, Body=StableReader(f, before),
                                   ContentLength=before.st_size)
            return
        data = gzip.compress(_read_whole(f, before), compresslevel=6, mtime=0)
        self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentEncoding="gzip")


class _LeanWire(_BotocoreWire):
    """Small objects and listings as lean signed requests (agent/s3fast.py, a tenth of
    botocore's CPU per request); large PUTs, and any listing the lean client could not read,
    through botocore."""

    def __init__(self, client, call: Callable, fast: FastS3):
        super().__init__(client, call)
        self.fast = fast

    def list_page(self, bucket: str, prefix: str, max_keys: int,
                  token: str | None) -> tuple[list[dict], str | None]:
        try:
            return self.fast.list_page(bucket, prefix, max_keys, token)
        except (S3RequestError, ElementTree.ParseError):
            # Asked again through botocore, so the error raised is a ClientError naming the
            # S3 error code agent.blame judges (AccessDenied on a bucket is the job's
            # problem, a refused signature the node's).
            return super().list_page(bucket, prefix, max_keys, token)

    def get(self, bucket: str, key: str, etag: str | None,
            byte_range: tuple[int, int] | None) -> _Answer:
        response = self.fast.get(bucket, key, byte_range, if_match=etag)
        length = response.headers.get("Content-Length")
        return _Answer(response.headers.get("ETag"),
                       response.headers.get("Content-Encoding", ""),
                       int(length) if length is not None else None,
                       response.read, response.release_conn)

    def put_small(self, bucket: str, key: str, f, before: os.stat_result,
                  compress: bool) -> None:
        if before.st_size > FAST_PUT_MAX_BYTES:
            super().put_small(bucket, key, f, before, compress)
            return
        data = _read_whole(f, before)
        if compress:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self.fast.put(bucket, key, data, "gzip" if compress else None)


class GzipReader:
    """A read()-only file object: the gzip stream of a file, compressed as it is read."""

    def __init__(self, source, level: int = 6):
        # A path (opened and closed here) or a file the caller opened and closes itself.
        self._owned = not hasattr(source, "read")
        self._file = open(source, "rb") if self._owned else source  # noqa: SIM115
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        self._buffer = bytearray()
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            chunk = self._file.read(READ_CHUNK)
            if chunk:
                self._buffer += self._compressor.compress(chunk)
            else:
                self._buffer += self._compressor.flush()
                self._eof = True
        if size < 0:
            size = len(self._buffer)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        if self._owned:
            self._file.close()


class _Progress:
    """Logs bytes done / total / rate of one large transfer every few seconds."""

    def __init__(self, kind: str, key: str, size: int | None):
        self.kind, self.key, self.size = kind, key, size
        self.done = 0
        self.started = time.monotonic()
        self.last_log = self.started
        self.lock = threading.Lock()

    def add(self, bytes_transferred: int) -> None:
        with self.lock:
            self.done += bytes_transferred
            now = time.monotonic()
            if (self.size or 0) < PROGRESS_MIN_BYTES or now - self.last_log < PROGRESS_EVERY_S:
                return
            self.last_log = now
            elapsed = now - self.started
        log.info(f"{self.kind} progress", extra={
            "key": self.key, "bytes_done": self.done, "bytes_total": self.size,
            "rate_mb_s": round(self.done / elapsed / 1e6, 1) if elapsed else None})


class Storage:
    """Small files (below the multipart threshold) go through a plain thread pool, one request
    each. Large files go up as a parallel multipart upload and come down as parallel ranged
    GETs written in place. Listings, GETs and small PUTs go through `self.wire`, picked once
    here: lean signed requests where the endpoint allows them (_LeanWire), else botocore
    (_BotocoreWire); multipart calls, HEADs, markers and deletes are botocore's."""

    def __init__(self, config: Config, listener: TransferListener | None = None):
        self.config = config
        session = botocore.session.get_session()
        self.client = make_s3_client(config, session)
        # Whether this node has storage settings at all, so a check of them means something.
        self.configured = bool(config.s3_endpoint_url or session.get_credentials())
        self.fast = _fast_client(config, session)
        self.wire = (_BotocoreWire(self.client, self._call) if self.fast is None
                     else _LeanWire(self.client, self._call, self.fast))
        self.listener = listener or TransferListener()
        self.threshold = config.multipart_threshold
        self.pool = ThreadPoolExecutor(config.transfer_concurrency,
                                       thread_name_prefix="kelpie-transfer")
        self.part_pool = ThreadPoolExecutor(config.part_concurrency,
                                            thread_name_prefix="kelpie-part")
        # Buckets a small PUT of this agent has been answered in, and for a bucket whose first
        # PUT is on its way, the event set when it is answered (see _first_write).
        self._written_buckets: set[str] = set()
        self._first_writes: dict[str, threading.Event] = {}
        self._first_write_lock = threading.Lock()

    def _call(self, operation: Callable, **kwargs):
        """A call no transfer loop repeats (listing, HEAD, markers, deletes, the storage
        check): tried up to max_retries times while its errors are transient."""
        return retry.call(lambda: operation(**kwargs), self.config.max_retries, transient)

    def list_buckets(self) -> dict:
        """The storage check's call (agent.blame.storage_problem)."""
        return self._call(self.client.list_buckets)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.part_pool.shutdown(wait=False, cancel_futures=True)

    # --- listing and deleting ---

    def list_objects(self, bucket: str, prefix: str) -> Iterable[dict]:
        """Every object under `prefix`, yielded page by page as the pages arrive. The first
        page is small: a store takes time in proportion to the keys it lists, and a restore
        starts downloading the first objects while the rest is being listed (see
        docs/agent.md, "Where the time goes")."""
        max_keys, token = FIRST_PAGE_KEYS, None
        while True:
            objects, token = self.wire.list_page(bucket, prefix, max_keys, token)
            yield from objects
            if not token:
                return
            max_keys = LIST_PAGE_KEYS

    def delete(self, rule: SyncRule, rel: str) -> None:
        key = rule.key_for(rel)
        self._call(self.client.delete_object, Bucket=rule.bucket, Key=key)
        log.info("deleted object of a deleted file", extra={"bucket": rule.bucket, "key": key})

    # --- commit markers (agent.commits) ---

    def unit_objects(self, rule: SyncRule, unit: str) -> dict[str, dict]:
        """name under the unit → {"size", "etag"} of every object of a unit, marker aside."""
        base = f"{rule.prefix}{unit}/"
        return {obj["Key"][len(base):]: {"size": obj["Size"], "etag": obj["ETag"]}
                for obj in self.list_objects(rule.bucket, base)
                if not commits.is_marker(obj["Key"])}

    def get_marker(self, rule: SyncRule, unit: str) -> bytes | None:
        """The unit's marker, or None if it has none."""
        try:
            answer = self._call(self.client.get_object, Bucket=rule.bucket,
                                Key=commits.marker_key(rule.prefix, unit))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        with answer["Body"] as body:
            return body.read()

    def put_marker(self, rule: SyncRule, unit: str, body: bytes) -> None:
        self._call(self.client.put_object, Bucket=rule.bucket,
                   Key=commits.marker_key(rule.prefix, unit), Body=body,
                   ContentType="application/json")

    def delete_marker(self, rule: SyncRule, unit: str) -> None:
        self._call(self.client.delete_object, Bucket=rule.bucket,
                   Key=commits.marker_key(rule.prefix, unit))

    # --- downloads ---

    def _committed_objects(self, rule: SyncRule, objects: list[dict]) -> list[dict]:
        """The objects a restore may download: top-level files, units without a marker
        (older agents, by hand), and of each marked unit only its committed content if all
        of it is there (agent.commits)."""
        units: dict[str, dict[str, dict]] = {}
        marked: set[str] = set()
        for obj in objects:
            rel = obj["Key"][len(rule.prefix):]
            unit = commits.unit_of(rel)
            if unit is None:
                continue
            if commits.is_marker(rel) and rel == f"{unit}/{commits.MARKER_NAME}":
                marked.add(unit)
            else:
                units.setdefault(unit, {})[rel[len(unit) + 1:]] = {
                    "size": obj["Size"], "etag": obj.get("ETag")}
        allowed: dict[str, set[str]] = {}
        for unit in marked:
            body = self.get_marker(rule, unit)
            committed = commits.decode(body) if body is not None else None
            allowed[unit] = commits.restorable(units.get(unit, {}), committed)
            skipped = sorted(set(units.get(unit, {})) - allowed[unit])
            if skipped:
                log.warning("skipped files of a checkpoint directory that is not committed",
                            extra={"bucket": rule.bucket, "unit": unit,
                                   "files": skipped[:10], "count": len(skipped)})
        kept = []
        for obj in objects:
            rel = obj["Key"][len(rule.prefix):]
            unit = commits.unit_of(rel)
            if commits.is_marker(rel):
                continue
            if unit in allowed and rel[len(unit) + 1:] not in allowed[unit]:
                continue
            kept.append(obj)
        return kept

    def _current(self, bucket: str, key: str, retried: bool = True) -> tuple[int, str]:
        """Size and ETag of the object now. `retried=False` inside a download, whose own
        loop asks again."""
        if retried:
            head = self._call(self.client.head_object, Bucket=bucket, Key=key)
        else:
            head = self.client.head_object(Bucket=bucket, Key=key)
        return head["ContentLength"], head["ETag"]

    def download_rule(self, rule: SyncRule,
                      cancel: threading.Event | None = None) -> dict[str, Fingerprint]:
        """Download every matching object under the rule's prefix; returns rel → fingerprint.

        Unsafe keys are refused and logged; checkpoint directories that are not committed are
        skipped (agent.commits). Every GET is pinned to the ETag the listing gave, so a file is
        never a mix of two versions; an object replaced meanwhile is restarted. Raises
        TransferFailed if any object still fails after retries, DownloadCanceled once `cancel`
        is set.
        """
        cancel = cancel or threading.Event()
        rule.local_dir.mkdir(parents=True, exist_ok=True)
        # Resolved once: every file's path is judged against it (_plan).
        root = os.path.realpath(rule.local_dir)
        made: set[str] = {root}
        # Set if the listing fails after downloads began: they stop before we raise, so no
        # thread still writes into a directory the caller may clean up next.
        halted = threading.Event()
        stop = _Either(cancel, halted)

        def start(plan) -> object:
            key, size, local_rel, path, maybe_compressed, etag = plan
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            self.listener.started("download", rule.bucket, key, size)
            if maybe_compressed or size is None or size < self.threshold:
                return agent_log.submit(self.pool, self._get_to_file, rule, key, path,
                                        maybe_compressed, etag, stop, local_rel)
            return agent_log.submit(self.pool, self._get_in_parts,
                                    rule, key, path, size, etag, stop, local_rel)

        # Top-level files are single objects, complete by themselves: each starts as soon as
        # its listing page is in, while later pages are still being listed. Files of a
        # checkpoint directory wait for the whole listing, which says which units are
        # committed (their markers).
        futures = {}
        in_units = []
        try:
            for obj in self.list_objects(rule.bucket, rule.prefix):
                if cancel.is_set():
                    break
                rel = obj["Key"][len(rule.prefix):]
                if commits.unit_of(rel) is not None:
                    in_units.append(obj)
                elif not commits.is_marker(rel) and (plan := self._plan(rule, obj, root)) is not None:
                    futures[start(plan)] = plan
            if not cancel.is_set():
                for obj in self._committed_objects(rule, in_units):
                    if (plan := self._plan(rule, obj, root)) is not None:
                        futures[start(plan)] = plan
        except BaseException:
            halted.set()
            for future, plan in futures.items():
                if not future.cancel():
                    future.exception()  # wait: it stops at its next chunk
                self.listener.finished("download", rule.bucket, plan[0])
            raise
        fingerprints: dict[str, Fingerprint] = {}
        last_error: Exception | None = None  # kept as the cause, so agent.blame can judge it
        failed: list[tuple] = []  # to try again
        given_up: list[tuple] = []  # a range used up its own attempts (PartFailed)
        for attempt in retry.Attempts(self.config.max_retries, cancel):
            if attempt > 1:
                futures = {start(plan): plan for plan in failed}
            failed = []
            canceled = False
            for future, plan in futures.items():
                key, _, local_rel, path, maybe_compressed, _ = plan
                try:
                    written = future.result()
                except DownloadCanceled:
                    canceled = True
                    continue
                except ObjectChanged:
                    # Replaced while we read it: start that file again on its new version.
                    log.warning("object changed during its download; restarting it",
                                extra={"key": key, "attempt": attempt})
                    try:
                        size, etag = self._current(rule.bucket, key)
                    except Exception:  # noqa: BLE001 - the retry will fail and say why
                        size, etag = plan[1], None
                    failed.append((key, size, local_rel, path, maybe_compressed, etag))
                    continue
                except PartFailed as error:
                    log.warning("download failed", extra={"key": key, "error": str(error),
                                                          "attempt": attempt})
                    last_error = error
                    given_up.append(plan)
                    continue
                except Exception as error:  # noqa: BLE001 - any failure is retried, then reported
                    log.warning("download failed", extra={"key": key, "error": str(error),
                                                          "attempt": attempt})
                    last_error = error
                    failed.append(plan)
                    continue
                finally:
                    self.listener.finished("download", rule.bucket, key)
                fingerprints[written[0]] = written[2]
            if canceled or stop.is_set():
                raise DownloadCanceled()
            if not failed:
                break
        if cancel.is_set():
            raise DownloadCanceled()  # set during a pause between attempts
        if failed or given_up:
            failed += given_up
            raise TransferFailed(
                f"{len(failed)} object(s) under s3://{rule.bucket}/{rule.prefix} failed to "
                f"download, e.g. {failed[0][0]}") from last_error
        log.info("downloaded", extra={"bucket": rule.bucket, "prefix": rule.prefix,
                                      "files": len(fingerprints), "local_dir": str(rule.local_dir)})
        return fingerprints

    def _plan(self, rule: SyncRule, obj: dict, root: str) -> tuple | None:
        """What downloading one listed object takes, or None for an object not to download:
        a "directory" marker, a file the pattern leaves out, an unsafe key (logged). `root`
        is the real path of the rule's directory."""
        key = obj["Key"]
        if key.endswith("/"):
            return None  # a "directory" marker object
        try:
            rel = rule.rel_for_key(key)
            maybe_compressed = rule.compression and rel.endswith(GZIP_SUFFIX)
            local_rel = rel[: -len(GZIP_SUFFIX)] if maybe_compressed else rel
            if not rule.matches(local_rel):
                return None
            path = _path_under(root, local_rel)
        except UnsafeKey as error:
            log.error("refused an object key that would land outside its directory",
                      extra={"bucket": rule.bucket, "key": key, "reason": str(error)})
            return None
        return key, obj.get("Size"), local_rel, path, maybe_compressed, obj.get("ETag")

    def _open(self, bucket: str, key: str, etag: str | None,
              byte_range: tuple[int, int] | None = None):
        """A streaming GET pinned to `etag`: (read, done, content encoding, body length or
        None). Raises ObjectChanged if the object no longer has that ETag (a 412, or, from a
        store that ignores If-Match, a different ETag in the answer)."""
        try:
            answer = self.wire.get(bucket, key, etag, byte_range)
        except Exception as error:
            if _precondition_failed(error):
                raise ObjectChanged(key) from error
            raise
        if etag and answer.etag and answer.etag.strip('"') != etag.strip('"'):
            answer.done()
            raise ObjectChanged(key)
        return answer.read, answer.done, answer.encoding, answer.length

    def _get_to_file(self, rule: SyncRule, key: str, path: str, maybe_compressed: bool,
                     etag: str | None = None, cancel: threading.Event | None = None,
                     local_rel: str | None = None):
        """One streaming GET into `path` (through a partial file renamed into place, so a
        reader never sees half a file). A gzip-encoded .gz object of a compressed job is
        decompressed under the name without .gz; any other object is written as it is.
        Returns (rel, path, fingerprint); `local_rel` is the rel of `path` if the caller knows
        it.

        Per file this is one GET, one os.open, one os.write per chunk, one fstat and one
        rename: Python file objects, a 1 MiB read buffer per small body and resolving the
        path again cost more CPU than the HTTP exchange itself on hundreds of small files
        (see docs/agent.md, "Where the time goes")."""
        if cancel is not None and cancel.is_set():
            raise DownloadCanceled()
        read, done, encoding, length = self._open(rule.bucket, key, etag)
        decompressor = None
        if maybe_compressed:
            if encoding.lower() == "gzip":
                decompressor = zlib.decompressobj(47)  # 47: gzip or zlib header, detected
            else:
                # Stored as it is although named .gz: written under its own name.
                local_rel = rule.rel_for_key(key)
                path = str(rule.local_path(local_rel))
        partial = path + PARTIAL_SUFFIX
        try:
            fd = _create_partial(partial)
            try:
                if length is not None and length <= READ_CHUNK:
                    # A body no larger than one streaming chunk, read in one call of its
                    # exact length: http.client's read(amt) allocates and zeroes a buffer of
                    # `amt` bytes (1 MiB) for every call, however short the body.
                    data = read()
                    if len(data) != length:
                        raise TransferFailed(f"{key}: got {len(data)} of {length} bytes")
                    if cancel is not None and cancel.is_set():
                        raise DownloadCanceled()
                    if decompressor:
                        _write_all(fd, decompressor.decompress(data))
                        data = decompressor.flush()
                    _write_all(fd, data)
                else:
                    while chunk := read(READ_CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise DownloadCanceled()
                        _write_all(fd, decompressor.decompress(chunk) if decompressor else chunk)
                    if decompressor:
                        _write_all(fd, decompressor.flush())
                # The fingerprint of the file written, from its open descriptor: a rename
                # keeps size, mtime and inode, and this saves resolving the path again.
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        finally:
            done()
        if local_rel is None:
            local_rel = rule.rel_for_path(Path(path))
        return local_rel, path, Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino)

    def _get_in_parts(self, rule: SyncRule, key: str, path: str | Path, size: int,
                      etag: str | None = None, cancel: threading.Event | None = None,
                      local_rel: str | None = None):
        """A large object as parallel ranged GETs, each written in place with pwrite into a
        partial file of the right size, renamed into place once every part is in. Every
        range carries If-Match on one ETag (the listing's, else the first answer's), so the
        parts are all of one version of the object."""
        cancel = cancel or threading.Event()
        path = Path(path)
        if etag is None:
            size, etag = self._current(rule.bucket, key, retried=False)
        part_size = self.config.multipart_chunksize
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        progress = _Progress("download", key, size)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            futures = [agent_log.submit(self.part_pool, self._get_range, rule.bucket, key, fd,
                                        offset, min(offset + part_size, size) - 1, progress,
                                        etag, cancel)
                       for offset in range(0, size, part_size)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                for future in futures:
                    if not future.cancelled():
                        future.exception()  # let running parts finish before closing fd
                raise
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        st = os.fstat(fd)
        os.close(fd)
        os.replace(partial, path)
        return (local_rel or rule.rel_for_path(path), path,
                Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino))

    def _get_range(self, bucket: str, key: str, fd: int, first: int, last: int,
                   progress: "_Progress", etag: str | None = None,
                   cancel: threading.Event | None = None) -> None:
        tries = retry.Attempts(self.config.max_retries)
        for _ in tries:
            offset = first
            try:
                if cancel is not None and cancel.is_set():
                    raise DownloadCanceled()
                read, done, _, _ = self._open(bucket, key, etag, (first, last))
                try:
                    while chunk := read(READ_CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise DownloadCanceled()
                        offset += _pwrite_all(fd, chunk, offset)
                finally:
                    done()
                if offset != last + 1:
                    raise TransferFailed(f"{key}: range {first}-{last} ended at {offset}")
                progress.add(last + 1 - first)
                return
            except (DownloadCanceled, ObjectChanged):
                raise  # neither gets better by asking again for this range
            except Exception as error:  # noqa: BLE001 - tried again, then raised
                if tries.last:
                    raise PartFailed(f"{key}: range {first}-{last}: {error}") from error

    # --- uploads ---

    def upload_files(self, rule: SyncRule, rels: list[str],
                     on_done: Callable[[str, Fingerprint], None] | None = None,
                     changed: set[str] | None = None) -> list[str]:
        """Upload these files in parallel; returns the rels that still failed after retries.

        `on_done(rel, fingerprint)` is called for each success with the fingerprint taken
        before reading the file, so a file changed during its upload is seen as changed. A
        file written to while it was read is not uploaded (its object stays as it was); with
        `changed` given it goes there and is not retried here, since its writer is at work:
        the caller sends it once it is complete again. Without `changed` it is retried.
        """
        pending = list(rels)
        given_up: list[str] = []  # a part used up its own attempts (PartFailed)
        for attempt in retry.Attempts(self.config.max_retries):
            # Everything per file (resolving the path, stat, open, read, sign, send) runs in
            # the transfer pool: done here, one file after another, resolving and stat'ing
            # 500 paths held back the first requests and competed for the GIL with the
            # threads sending (see docs/agent.md, "Where the time goes").
            futures = [(rel, self.upload_async(rule, rel)) for rel in pending]
            failed = []
            for rel, future in futures:
                try:
                    fingerprint = future.result()
                except UnsafeKey:
                    raise  # a path leaving its directory: no retry makes it uploadable
                except FileChanged:
                    if changed is not None:
                        changed.add(rel)
                        continue
                    failed.append(rel)
                    continue
                except PartFailed as error:
                    log.warning("upload failed", extra={"key": rule.key_for(rel),
                                                        "error": str(error), "attempt": attempt})
                    given_up.append(rel)
                    continue
                except Exception as error:  # noqa: BLE001
                    log.warning("upload failed", extra={"key": rule.key_for(rel),
                                                        "error": str(error), "attempt": attempt})
                    failed.append(rel)
                    continue
                if fingerprint is None:
                    continue  # deleted meanwhile: nothing to upload
                if on_done:
                    on_done(rel, fingerprint)
            pending = failed
            if not pending:
                break
        return pending + given_up

    def upload_async(self, rule: SyncRule, rel: str):
        """Start one upload; returns a future whose result() is the fingerprint of the
        version sent (None if the file was gone), and raises on failure."""
        return agent_log.submit(self.pool, self._upload_one, rule, rel)

    def _upload_one(self, rule: SyncRule, rel: str) -> Fingerprint | None:
        """Open the file once and upload that open file: its fingerprint is the fstat taken
        before the first byte is read, so it describes exactly the version checked and sent
        (a stat of the path beforehand cost a syscall and could see another inode)."""
        key = rule.key_for(rel)
        path = rule.local_path(rel)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the transfer
        except FileNotFoundError:
            return None
        with f:
            before = os.fstat(f.fileno())
            self.listener.started("upload", rule.bucket, key, before.st_size)
            try:
                if before.st_size < self.threshold:
                    self._put_small(rule, key, f, before)
                else:
                    self._put_multipart(rule, key, f, before)
            finally:
                self.listener.finished("upload", rule.bucket, key)
        return Fingerprint(before.st_size, before.st_mtime_ns, before.st_ino)

    @contextlib.contextmanager
    def _first_write(self, bucket: str):
        """The first small PUT into a bucket goes alone: the others wait (FIRST_WRITE_WAIT_S at
        most) until it is answered. Measured on SeaweedFS (docs/agent.md, "Small uploads into a
        new bucket"): a new bucket's first write makes the store create the bucket's first
        volume (about 0.2 s), and every PUT that arrives meanwhile is answered about 1.0-1.1 s
        later, so 32 PUTs sent at once into a new bucket held a 500-file upload to about
        1.05 s however many threads sent them. One PUT first costs one request's latency once
        per bucket for the agent's lifetime; after that this is a set lookup."""
        if bucket in self._written_buckets:
            yield
            return
        with self._first_write_lock:
            gate = self._first_writes.get(bucket)
            leader = gate is None and bucket not in self._written_buckets
            if leader:
                gate = self._first_writes[bucket] = threading.Event()
        if not leader:
            if gate is not None:
                gate.wait(FIRST_WRITE_WAIT_S)
            yield
            return
        answered = False
        try:
            yield
            answered = True
        finally:
            # Answered, or failed (others then meet their own answer): either way the
            # others go ahead. A failed first write leaves the bucket unmarked, so the next
            # small PUT after it goes first again.
            with self._first_write_lock:
                del self._first_writes[bucket]
                if answered:
                    self._written_buckets.add(bucket)
            gate.set()

    def _put_small(self, rule: SyncRule, key: str, f, before: os.stat_result) -> None:
        """One PUT. The bytes sent must be one version of the file: read into memory and
        checked (lean path, compression), or streamed through StableReader."""
        with self._first_write(rule.bucket):
            self._put_small_now(rule, key, f, before)

    def _put_small_now(self, rule: SyncRule, key: str, f, before: os.stat_result) -> None:
        """The PUT itself, once the first-write gate has let it through."""
        self.wire.put_small(rule.bucket, key, f, before, rule.compression)

    def _put_multipart(self, rule: SyncRule, key: str, f, before: os.stat_result) -> None:
        """Multipart upload with parts in parallel. Parts are read in order by this thread
        (gzip-compressed on the way when the job asks for compression) and sent as plain bytes
        by the part pool, at most `part_concurrency` in flight, so memory stays bounded and
        each part goes out in one send rather than through a Python read loop."""
        size = before.st_size
        part_size = max(self.config.multipart_chunksize, -(-size // MAX_PARTS))
        extra = {"ContentEncoding": "gzip"} if rule.compression else {}
        upload_id = self.client.create_multipart_upload(
            Bucket=rule.bucket, Key=key, **extra)["UploadId"]
        progress = _Progress("upload", key, size)
        in_flight = threading.BoundedSemaphore(self.config.part_concurrency)
        abandoned = threading.Event()  # ends the pauses of parts still being tried
        futures = []

        def send(number: int, data: bytes) -> dict:
            # A part is tried again by itself: redoing the whole upload would resend every
            # good part and multiply the attempts of this one.
            try:
                tries = retry.Attempts(self.config.max_retries, abandoned)
                for _ in tries:
                    try:
                        answer = self.client.upload_part(Bucket=rule.bucket, Key=key,
                                                         UploadId=upload_id, PartNumber=number,
                                                         Body=data)
                    except Exception as error:  # noqa: BLE001 - tried again, then raised
                        if tries.last:
                            raise PartFailed(f"{key}: part {number}: {error}") from error
                        continue
                    progress.add(len(data))
                    return {"PartNumber": number, "ETag": answer["ETag"]}
                raise TransferFailed(f"{key}: part {number}: the upload was abandoned")
            finally:
                in_flight.release()

        try:
            source = GzipReader(f) if rule.compression else f
            number = 0
            while True:
                data = source.read(part_size)
                if not data and number > 0:
                    break
                number += 1
                in_flight.acquire()
                futures.append(agent_log.submit(self.part_pool, send, number, data))
                if len(data) < part_size:
                    break
            # Completing is what replaces the object: only if every part is of one
            # version of the file (nothing wrote to it while we read it).
            stable = _unchanged(f.fileno(), before)
            parts = [future.result() for future in futures]
            if not stable:
                raise FileChanged(f.name)
            self.client.complete_multipart_upload(
                Bucket=rule.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            abandoned.set()
            for future in futures:
                future.cancel()
            try:
                self.client.abort_multipart_upload(Bucket=rule.bucket, Key=key,
                                                   UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise


class _Either:
    """Set when either of two events is: the caller's cancel or our own halt."""

    def __init__(self, first: threading.Event, second: threading.Event):
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()
