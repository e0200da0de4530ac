"""S3 transfers on botocore + s3transfer: parallel files, multipart for large ones, streaming gzip.

One `Storage` per agent: one botocore client and one s3transfer TransferManager shared by every
transfer, so connections are reused and `KELPIE_TRANSFER_CONCURRENCY` bounds the whole agent.
Compressed uploads are gzip-compressed while they stream out of the file, and compressed downloads
are decompressed while they stream in, so no temporary copy is ever written.
"""

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import botocore.session
from botocore.config import Config as BotoConfig
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from agent import log as agent_log
from agent import retry
from agent.config import Config
from agent.paths import GZIP_SUFFIX, SyncRule, UnsafeKey

log = agent_log.get_logger(__name__)

PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # transfers this large log their progress
PROGRESS_EVERY_S = 2.0
READ_CHUNK = 1024 * 1024
PARTIAL_SUFFIX = ".kelpie-partial"


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


class TransferListener:
    """Told about transfers as they start and finish (the state file listens)."""

    def started(self, kind: str, bucket: str, key: str, size: int | None) -> None: ...

    def finished(self, kind: str, bucket: str, key: str) -> None: ...


def make_s3_client(config: Config):
    session = botocore.session.get_session()
    addressing = config.s3_addressing_style
    if addressing == "auto":
        # Custom endpoints (SeaweedFS, MinIO) rarely have wildcard DNS: path style always works.
        addressing = "path" if config.s3_endpoint_url else "auto"
    boto_config = BotoConfig(
        region_name=config.s3_region,
        max_pool_connections=config.transfer_concurrency + 4,
        retries={"max_attempts": config.max_retries, "mode": "standard"},
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


class GzipReader:
    """A read()-only file object: the gzip stream of a file, compressed as it is read."""

    def __init__(self, path: Path, level: int = 6):
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), after the upload
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

    def close(self) -> None:
        self._file.close()


class _Progress(BaseSubscriber):
    """Logs bytes done / total / rate of one large transfer every few seconds."""

    def __init__(self, kind: str, key: str, size: int | None):
        self.kind, self.key, self.size = kind, key, size
        self.done = 0
        self.started = time.monotonic()
        self.last_log = self.started
        self.lock = threading.Lock()

    def on_queued(self, future, **kwargs):
        if self.kind == "download" and self.size is not None:
            future.meta.provide_transfer_size(self.size)  # saves a HEAD request per object

    def on_progress(self, future, bytes_transferred, **kwargs):
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
    def __init__(self, config: Config, listener: TransferListener | None = None):
        self.config = config
        self.client = make_s3_client(config)
        self.listener = listener or TransferListener()
        self.transfer_config = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            max_request_concurrency=config.transfer_concurrency,
            max_submission_concurrency=max(2, config.transfer_concurrency // 2),
            max_in_memory_upload_chunks=config.transfer_concurrency,
            max_in_memory_download_chunks=config.transfer_concurrency * 4,
            io_chunksize=READ_CHUNK,
            num_download_attempts=config.max_retries,
        )
        self.manager = TransferManager(self.client, self.transfer_config)
        # Streaming (compressed) downloads are ours rather than s3transfer's.
        self.stream_pool = ThreadPoolExecutor(config.transfer_concurrency,
                                              thread_name_prefix="kelpie-stream")

    def close(self) -> None:
        self.manager.shutdown()
        self.stream_pool.shutdown(wait=False, cancel_futures=True)

    # --- listing and deleting ---

    def list_objects(self, bucket: str, prefix: str) -> Iterable[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def delete(self, rule: SyncRule, rel: str) -> None:
        key = rule.key_for(rel)
        self.client.delete_object(Bucket=rule.bucket, Key=key)
        log.info("deleted object of a deleted file", extra={"bucket": rule.bucket, "key": key})

    # --- downloads ---

    def download_rule(self, rule: SyncRule) -> dict[str, Fingerprint]:
        """Download every matching object under the rule's prefix; returns rel → fingerprint.

        Unsafe keys are refused and logged. Raises TransferFailed if any object still fails
        after retries.
        """
        rule.local_dir.mkdir(parents=True, exist_ok=True)
        plans = []
        for obj in self.list_objects(rule.bucket, rule.prefix):
            key = obj["Key"]
            if key.endswith("/"):
                continue  # a "directory" marker object
            try:
                rel = rule.rel_for_key(key)
                maybe_compressed = rule.compression and rel.endswith(GZIP_SUFFIX)
                local_rel = rel[: -len(GZIP_SUFFIX)] if maybe_compressed else rel
                if not rule.matches(local_rel):
                    continue
                path = rule.local_path(local_rel)
            except UnsafeKey as error:
                log.error("refused an object key that would land outside its directory",
                          extra={"bucket": rule.bucket, "key": key, "reason": str(error)})
                continue
            plans.append((key, obj.get("Size"), local_rel, path, maybe_compressed))
        fingerprints: dict[str, Fingerprint] = {}
        pending = list(plans)
        for attempt in range(1, self.config.max_retries + 1):
            futures = {}
            for key, size, local_rel, path, maybe_compressed in pending:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.listener.started("download", rule.bucket, key, size)
                if maybe_compressed:
                    future = agent_log.submit(self.stream_pool, self._download_maybe_gzip,
                                              rule.bucket, key, path, rule)
                else:
                    future = self.manager.download(
                        rule.bucket, key, str(path),
                        subscribers=[_Progress("download", key, size)])
                futures[future] = (key, size, local_rel, path, maybe_compressed)
            failed = []
            for future, plan in futures.items():
                key, _, local_rel, path, _ = plan
                try:
                    written = future.result()
                except Exception as error:  # noqa: BLE001 - any failure is retried, then reported
                    log.warning("download failed", extra={"key": key, "error": str(error),
                                                          "attempt": attempt})
                    failed.append(plan)
                    continue
                finally:
                    self.listener.finished("download", rule.bucket, key)
                written_rel, written_path = written if isinstance(written, tuple) else (
                    local_rel, path)
                fingerprints[written_rel] = Fingerprint.of(written_path)
            if not failed:
                break
            pending = failed
            if attempt == self.config.max_retries:
                raise TransferFailed(
                    f"{len(failed)} object(s) under s3://{rule.bucket}/{rule.prefix} failed to "
                    f"download, e.g. {failed[0][0]}")
            retry.sleep(retry.backoff_delay(attempt))
        log.info("downloaded", extra={"bucket": rule.bucket, "prefix": rule.prefix,
                                      "files": len(fingerprints), "local_dir": str(rule.local_dir)})
        return fingerprints

    def _download_maybe_gzip(self, bucket: str, key: str, path: Path, rule: SyncRule):
        """GET a .gz object: gzip-encoded ones are decompressed under the name without .gz,
        anything else is written as it is under its own name."""
        response = self.client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        if response.get("ContentEncoding", "").lower() != "gzip":
            rel = rule.rel_for_key(key)
            path = rule.local_path(rel)
            decompressor = None
        else:
            rel = rule.rel_for_path(path)
            decompressor = zlib.decompressobj(47)  # 47: gzip or zlib header, detected
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            with open(partial, "wb") as out:
                for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                    out.write(decompressor.decompress(chunk) if decompressor else chunk)
                if decompressor:
                    out.write(decompressor.flush())
            os.replace(partial, path)
        finally:
            body.close()
            if partial.exists():
                partial.unlink()
        return rel, path

    # --- uploads ---

    def upload_files(self, rule: SyncRule, rels: list[str],
                     on_done: Callable[[str, Fingerprint], None] | None = None) -> list[str]:
        """Upload these files in parallel; returns the rels that still failed after retries.

        `on_done(rel, fingerprint)` is called for each success with the fingerprint taken
        before reading the file, so a file changed during its upload is seen as changed.
        """
        pending = list(rels)
        for attempt in range(1, self.config.max_retries + 1):
            futures = {}
            for rel in pending:
                path = rule.local_path(rel)
                fingerprint = Fingerprint.of(path)
                if fingerprint is None:
                    continue  # deleted meanwhile: nothing to upload
                futures[self.upload_async(rule, rel, path, fingerprint.size)] = (rel, fingerprint)
            failed = []
            for future, (rel, fingerprint) in futures.items():
                try:
                    future.result()
                except Exception as error:  # noqa: BLE001
                    log.warning("upload failed", extra={"key": rule.key_for(rel),
                                                        "error": str(error), "attempt": attempt})
                    failed.append(rel)
                    continue
                if on_done:
                    on_done(rel, fingerprint)
            if not failed:
                return []
            pending = failed
            if attempt < self.config.max_retries:
                retry.sleep(retry.backoff_delay(attempt))
        return pending

    def upload_async(self, rule: SyncRule, rel: str, path: Path, size: int):
        """Start one upload; returns a future whose result() raises on failure."""
        key = rule.key_for(rel)
        self.listener.started("upload", rule.bucket, key, size)
        progress = _Progress("upload", key, size)
        if rule.compression:
            reader = GzipReader(path)
            future = self.manager.upload(reader, rule.bucket, key,
                                         extra_args={"ContentEncoding": "gzip"},
                                         subscribers=[progress])
        else:
            reader = None
            future = self.manager.upload(str(path), rule.bucket, key, subscribers=[progress])
        return _Finishing(future, lambda: self._upload_finished(rule.bucket, key, reader))

    def _upload_finished(self, bucket, key, reader):
        if reader is not None:
            reader.close()
        self.listener.finished("upload", bucket, key)


class _Finishing:
    """Wraps a transfer future so its clean-up runs exactly once when its result is taken."""

    def __init__(self, future, finish):
        self.future = future
        self._finish = finish
        self._lock = threading.Lock()
        self._finished = False

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout=None):
        try:
            return self.future.result()
        finally:
            with self._lock:
                if not self._finished:
                    self._finished = True
                    self._finish()
