"""Transfers against a real SeaweedFS on loopback."""

import gzip
import os
import re
import threading
import time

import pytest

from agent.paths import SyncRule
from agent.storage import DownloadCanceled, Fingerprint, GzipReader, Storage, TransferFailed


def test_gzip_reader_streams_a_gzip_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024) + b"a" * 100000
    path = tmp_path / "f"
    path.write_bytes(data)
    reader = GzipReader(path)
    chunks = []
    while chunk := reader.read(65536):
        chunks.append(chunk)
    reader.close()
    assert gzip.decompress(b"".join(chunks)) == data


@pytest.fixture(params=["lean", "botocore"])
def storage(request, make_config, seaweed):
    """Every test runs with small objects on the lean signed path and on botocore."""
    store = Storage(make_config(seaweed, KELPIE_MULTIPART_THRESHOLD_MB=5,
                                KELPIE_MULTIPART_CHUNK_MB=5,
                                KELPIE_FAST_SMALL_TRANSFERS=request.param == "lean"))
    assert (store.fast is not None) == (request.param == "lean")
    yield store
    store.close()


def test_awkward_key_names_round_trip(storage, bucket, tmp_path):
    source = tmp_path / "up"
    names = ["with space.txt", "plus+sign.txt", "ünïcödé/ß.txt", "q?uery&amp=1.txt",
             "tilde~/pct%41.txt", "a'quote\".txt"]
    for i, name in enumerate(names):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(str(i))
    rule = SyncRule(bucket, "odd names/", source)
    assert storage.upload_files(rule, names) == []
    keys = sorted(o["Key"] for o in storage.list_objects(bucket, "odd names/"))
    assert keys == sorted("odd names/" + n for n in names)
    fingerprints = storage.download_rule(SyncRule(bucket, "odd names/", tmp_path / "down"))
    assert set(fingerprints) == set(names)
    for i, name in enumerate(names):
        assert (tmp_path / "down" / name).read_text() == str(i)


def test_wrong_credentials_fail_cleanly(make_config, seaweed, bucket, tmp_path, monkeypatch):
    config = make_config(seaweed, MAX_RETRIES=1)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")  # botocore's chain reads os.environ
    store = Storage(config)
    (tmp_path / "f.txt").write_text("x")
    try:
        assert store.upload_files(SyncRule(bucket, "p/", tmp_path), ["f.txt"]) == ["f.txt"]
    finally:
        store.close()


def test_upload_and_download_round_trip_with_multipart(storage, bucket, tmp_path):
    source = tmp_path / "up"
    (source / "nested").mkdir(parents=True)
    big = os.urandom(12 * 1024 * 1024)  # above the 5 MiB threshold: three parts
    (source / "nested" / "big.bin").write_bytes(big)
    for i in range(30):
        (source / f"small-{i}.txt").write_text(str(i))
    rule = SyncRule(bucket, "rt/", source)
    rels = ["nested/big.bin"] + [f"small-{i}.txt" for i in range(30)]
    done = {}
    assert storage.upload_files(rule, rels, on_done=lambda rel, fp: done.update({rel: fp})) == []
    assert set(done) == set(rels)
    head = storage.client.head_object(Bucket=bucket, Key="rt/nested/big.bin")
    assert head["ContentLength"] == len(big) and "-" in head["ETag"]  # a multipart ETag

    target = SyncRule(bucket, "rt/", tmp_path / "down", re.compile(r"(big|small-1\d)"))
    fingerprints = storage.download_rule(target)
    assert set(fingerprints) == {"nested/big.bin"} | {f"small-{i}.txt" for i in range(10, 20)}
    assert (tmp_path / "down" / "nested" / "big.bin").read_bytes() == big
    assert fingerprints["nested/big.bin"] == Fingerprint.of(tmp_path / "down/nested/big.bin")


def test_compressed_round_trip(storage, bucket, tmp_path):
    source = tmp_path / "up"
    source.mkdir()
    data = b"checkpoint " * 200000
    (source / "model.ckpt").write_bytes(data)
    rule = SyncRule(bucket, "gz/", source, compression=True)
    assert storage.upload_files(rule, ["model.ckpt"]) == []
    stored = storage.client.get_object(Bucket=bucket, Key="gz/model.ckpt.gz")
    assert stored["ContentEncoding"] == "gzip"
    assert len(stored["Body"].read()) < len(data) / 10

    down = SyncRule(bucket, "gz/", tmp_path / "down", compression=True)
    assert set(storage.download_rule(down)) == {"model.ckpt"}
    assert (tmp_path / "down" / "model.ckpt").read_bytes() == data
    assert not list((tmp_path / "down").glob("*.kelpie-partial"))


def test_unsafe_keys_are_skipped_not_written(storage, bucket, tmp_path, monkeypatch):
    listing = [{"Key": "p/../../escape.txt", "Size": 1}, {"Key": "p//etc/passwd", "Size": 1},
               {"Key": "p/dir/", "Size": 0}]
    monkeypatch.setattr(storage, "list_objects", lambda b, p: iter(listing))
    rule = SyncRule(bucket, "p/", tmp_path / "in")
    assert storage.download_rule(rule) == {}
    assert list(tmp_path.rglob("*escape*")) == []


def test_missing_bucket_download_fails(storage, tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - botocore's NoSuchBucket
        storage.download_rule(SyncRule("no-such-bucket-xyz", "p/", tmp_path / "in"))


def test_download_failure_after_retries_raises(storage, bucket, tmp_path, monkeypatch):
    storage.client.put_object(Bucket=bucket, Key="f/a.txt", Body=b"a")

    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise OSError("disk on fire")

    monkeypatch.setattr(storage, "_get_to_file", broken)
    with pytest.raises(TransferFailed):
        storage.download_rule(SyncRule(bucket, "f/", tmp_path / "in"))
    assert len(calls) == storage.config.max_retries


def test_large_compressed_upload_streams_in_parts(storage, bucket, tmp_path):
    source = tmp_path / "up"
    source.mkdir()
    # Incompressible enough to need several 5 MiB parts even after gzip.
    data = os.urandom(11 * 1024 * 1024) + b"z" * (4 * 1024 * 1024)
    (source / "big.ckpt").write_bytes(data)
    rule = SyncRule(bucket, "gzbig/", source, compression=True)
    assert storage.upload_files(rule, ["big.ckpt"]) == []
    head = storage.client.head_object(Bucket=bucket, Key="gzbig/big.ckpt.gz")
    assert head["ContentEncoding"] == "gzip" and head["ETag"].endswith('-3"')
    down = SyncRule(bucket, "gzbig/", tmp_path / "down", compression=True)
    storage.download_rule(down)
    assert (tmp_path / "down" / "big.ckpt").read_bytes() == data


def test_failed_multipart_upload_is_aborted(storage, bucket, tmp_path, monkeypatch):
    source = tmp_path / "up"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))

    def broken_part(**kwargs):
        raise OSError("network gone")

    monkeypatch.setattr(storage.client, "upload_part", broken_part)
    assert storage.upload_files(SyncRule(bucket, "abort/", source), ["big.bin"]) == ["big.bin"]
    assert storage.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_large_transfers_log_progress(storage, bucket, tmp_path, monkeypatch, caplog):
    import agent.storage as storage_module

    monkeypatch.setattr(storage_module, "PROGRESS_MIN_BYTES", 1)
    monkeypatch.setattr(storage_module, "PROGRESS_EVERY_S", 0)
    source = tmp_path / "up"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(11 * 1024 * 1024))
    with caplog.at_level("INFO", logger="agent"):
        assert storage.upload_files(SyncRule(bucket, "prog/", source), ["big.bin"]) == []
        storage.download_rule(SyncRule(bucket, "prog/", tmp_path / "down"))
    for kind in ("upload", "download"):
        lines = [r for r in caplog.records if r.getMessage() == f"{kind} progress"]
        assert lines, kind
        assert lines[-1].bytes_total == 11 * 1024 * 1024 and lines[-1].bytes_done > 0
        assert lines[-1].rate_mb_s is not None


@pytest.fixture(params=["lean", "botocore"])
def serial_storage(request, make_config, seaweed):
    """One part at a time, so a test can act between two ranged GETs of one file."""
    store = Storage(make_config(seaweed, KELPIE_MULTIPART_THRESHOLD_MB=5,
                                KELPIE_MULTIPART_CHUNK_MB=5, KELPIE_PART_CONCURRENCY=1,
                                KELPIE_FAST_SMALL_TRANSFERS=request.param == "lean"))
    yield store
    store.close()


def test_overwrite_during_a_ranged_download_restarts_the_file(serial_storage, bucket, tmp_path,
                                                              caplog):
    """Every range is pinned to one ETag: an object replaced after the first part arrived
    must not produce a file of old and new bytes; the file is restarted on the new version."""
    storage = serial_storage
    old, new = b"o" * (20 * 1024 * 1024), b"n" * (20 * 1024 * 1024)
    storage.client.put_object(Bucket=bucket, Key="pin/model.bin", Body=old)
    real_get_range = storage._get_range
    overwritten = threading.Event()

    def get_range_then_overwrite(*args, **kwargs):
        real_get_range(*args, **kwargs)
        if not overwritten.is_set():
            overwritten.set()  # the first part is in: now the object changes under us
            storage.client.put_object(Bucket=bucket, Key="pin/model.bin", Body=new)

    storage._get_range = get_range_then_overwrite
    storage.download_rule(SyncRule(bucket, "pin/", tmp_path / "down"))
    assert overwritten.is_set()
    assert (tmp_path / "down" / "model.bin").read_bytes() == new
    assert "object changed during its download; restarting it" in caplog.text


def test_a_canceled_download_stops_and_leaves_nothing(serial_storage, bucket, tmp_path):
    """A job lost during its download: the transfer stops at the next part and leaves no file
    behind, so cleaning the directory afterwards is final."""
    storage = serial_storage
    storage.client.put_object(Bucket=bucket, Key="cx/big.bin", Body=os.urandom(30 * 1024 * 1024))
    cancel = threading.Event()
    opened = []
    real_open = storage._open

    def open_then_cancel(*args, **kwargs):
        opened.append(args)
        answer = real_open(*args, **kwargs)
        cancel.set()  # the job is lost while the first part streams in
        return answer

    storage._open = open_then_cancel
    with pytest.raises(DownloadCanceled):
        storage.download_rule(SyncRule(bucket, "cx/", tmp_path / "down"), cancel)
    assert list((tmp_path / "down").iterdir()) == []
    assert len(opened) == 1  # no part after the cancel was even asked for


@pytest.mark.parametrize("size_mib", [1, 8, 12])  # lean PUT, streamed PUT, multipart
def test_a_file_rewritten_during_its_upload_never_replaces_the_object(storage, bucket, tmp_path,
                                                                      size_mib, monkeypatch):
    """An in-place save that starts while the previous version is still going up: the upload
    must stop with FileChanged before the object is replaced, never send a mix."""
    size = size_mib * 1024 * 1024
    source = tmp_path / "up"
    source.mkdir()
    path = source / "last.pt"
    path.write_bytes(b"g" * size)
    rule = SyncRule(bucket, "rw/", source)
    assert storage.upload_files(rule, ["last.pt"]) == []
    path.write_bytes(b"h" * size)  # the version this upload starts to read
    real_open = open

    class RewrittenWhileRead:
        """The file as the upload reads it; its first read lets the program start its next
        in-place save (after the upload took the file's size and times)."""

        def __init__(self, handle):
            self.handle, self.name, self.rewritten = handle, handle.name, False

        def read(self, size=-1):
            if not self.rewritten:
                self.rewritten = True
                with real_open(path, "r+b") as writer:
                    writer.write(b"x" * (size_mib * 1024 * 1024 // 2))
            return self.handle.read(size)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def open_then_rewrite(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return RewrittenWhileRead(handle) if str(file) == str(path) else handle

    monkeypatch.setattr("agent.storage.open", open_then_rewrite, raising=False)
    changed: set[str] = set()
    failed = storage.upload_files(rule, ["last.pt"], changed=changed)
    monkeypatch.undo()
    assert failed == [] and changed == {"last.pt"}
    body = storage.client.get_object(Bucket=bucket, Key="rw/last.pt")["Body"].read()
    assert body == b"g" * size  # the good object stayed


def test_listing_in_pages_matches_botocore_and_restores_everything(storage, bucket, tmp_path,
                                                                   monkeypatch):
    """Small pages force several continuation tokens; awkward names survive the lean
    client's URL-encoded listing exactly as they do botocore's."""
    import agent.storage as storage_module

    monkeypatch.setattr(storage_module, "FIRST_PAGE_KEYS", 2)
    monkeypatch.setattr(storage_module, "LIST_PAGE_KEYS", 3)
    source = tmp_path / "up"
    names = [f"f-{i}.bin" for i in range(6)] + ["with space+plus.txt", "ünï/ß%41&x.txt",
                                                 "unit/a.bin", "unit/b.bin"]
    for i, name in enumerate(names):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(os.urandom(100 + i))
    rule = SyncRule(bucket, "pages/", source)
    assert storage.upload_files(rule, names) == []
    listed = [(o["Key"], o["Size"], o["ETag"]) for o in storage.list_objects(bucket, "pages/")]
    pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix="pages/")
    expected = [(o["Key"], o["Size"], o["ETag"]) for page in pages for o in page["Contents"]]
    assert sorted(listed) == sorted(expected) and len(listed) == len(names)
    fingerprints = storage.download_rule(SyncRule(bucket, "pages/", tmp_path / "down"))
    assert set(fingerprints) == set(names)
    for name in names:
        assert (tmp_path / "down" / name).read_bytes() == (source / name).read_bytes()
        assert fingerprints[name] == Fingerprint.of(tmp_path / "down" / name)


def test_listing_error_is_botocores(storage, tmp_path):
    """agent.blame judges a failed restore by botocore's error code (NoSuchBucket is the
    job's problem): the lean listing must not replace it with a bare status."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        list(storage.list_objects("no-such-bucket-xyz", "p/"))
    assert caught.value.response["Error"]["Code"] == "NoSuchBucket"


def test_listing_failure_stops_downloads_already_started(storage, bucket, tmp_path,
                                                         monkeypatch):
    """Downloads of the first page start while the listing goes on; if a later page fails,
    every started download has stopped before the error reaches the caller (which may clean
    the directory next)."""
    import agent.storage as storage_module

    monkeypatch.setattr(storage_module, "FIRST_PAGE_KEYS", 3)
    for i in range(6):
        storage.client.put_object(Bucket=bucket, Key=f"lf/f-{i}.bin", Body=os.urandom(1000))
    real_list_page, real_get = storage.wire.list_page, storage._get_to_file
    first_page_started = threading.Event()
    running, ended = [], []

    def list_page(bucket_name, prefix, max_keys, token):
        if token is None:
            return real_list_page(bucket_name, prefix, max_keys, token)
        assert first_page_started.wait(10)  # a download of page 1 is under way
        raise ConnectionError("listing cut")

    def get_to_file(*args, **kwargs):
        running.append(args[1])
        first_page_started.set()
        try:
            time.sleep(0.2)  # still writing when the listing fails
            return real_get(*args, **kwargs)
        finally:
            ended.append(args[1])

    monkeypatch.setattr(storage.wire, "list_page", list_page)
    monkeypatch.setattr(storage, "_get_to_file", get_to_file)
    with pytest.raises(ConnectionError):
        storage.download_rule(SyncRule(bucket, "lf/", tmp_path / "down"))
    assert running and sorted(ended) == sorted(running)
    assert not list((tmp_path / "down").glob("*.kelpie-partial"))


def test_file_gone_before_its_upload_is_not_reported(storage, bucket, tmp_path):
    (tmp_path / "here.bin").write_bytes(b"x")
    done = {}
    rule = SyncRule(bucket, "gone/", tmp_path)
    assert storage.upload_files(rule, ["here.bin", "gone.bin"],
                                on_done=lambda rel, fp: done.update({rel: fp})) == []
    assert done == {"here.bin": Fingerprint.of(tmp_path / "here.bin")}


def test_a_symlinked_subdirectory_that_leaves_the_directory_is_refused(storage, bucket,
                                                                      tmp_path):
    """The per-file path check (resolved once per download, one lstat per component) still
    refuses a key whose directory is a symlink leading outside, and still follows one that
    stays inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    down = tmp_path / "down"
    (down / "inside").mkdir(parents=True)
    (down / "out").symlink_to(outside)
    (down / "in").symlink_to(down / "inside")
    for key in ("s/out/evil.txt", "s/in/good.txt", "s/plain.txt"):
        storage.client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    fingerprints = storage.download_rule(SyncRule(bucket, "s/", down))
    assert list(outside.iterdir()) == []
    assert (down / "inside" / "good.txt").read_bytes() == b"s/in/good.txt"
    assert (down / "plain.txt").read_bytes() == b"s/plain.txt"
    assert "out/evil.txt" not in fingerprints and "plain.txt" in fingerprints


def test_a_file_planted_at_the_partial_name_is_never_written_through(storage, bucket, tmp_path):
    """The partial file is created with O_EXCL: a leftover partial file from an interrupted
    run is replaced, and a symlink planted under the partial name is removed, not followed."""
    down = tmp_path / "down"
    down.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (down / "a.bin.kelpie-partial").symlink_to(victim)
    (down / "b.bin.kelpie-partial").write_bytes(b"stale half of an older download" * 1000)
    a, b = os.urandom(70000), os.urandom(1000)
    storage.client.put_object(Bucket=bucket, Key="pt/a.bin", Body=a)
    storage.client.put_object(Bucket=bucket, Key="pt/b.bin", Body=b)
    fingerprints = storage.download_rule(SyncRule(bucket, "pt/", down))
    assert victim.read_bytes() == b"keep me"
    assert (down / "a.bin").read_bytes() == a and (down / "b.bin").read_bytes() == b
    assert sorted(p.name for p in down.iterdir()) == ["a.bin", "b.bin"]
    assert fingerprints == {"a.bin": Fingerprint.of(down / "a.bin"),
                            "b.bin": Fingerprint.of(down / "b.bin")}


def test_a_symlinked_download_directory_reports_plain_rels(storage, bucket, tmp_path):
    """The fingerprints are keyed by the file's path under the rule's directory as the
    directory is named, also when that name is a symlink (as the sync compares them with the
    files it walks), whether the file came in one GET or in parts."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    small, big = os.urandom(1000), os.urandom(6 * 1024 * 1024)
    storage.client.put_object(Bucket=bucket, Key="ln/sub/small.bin", Body=small)
    storage.client.put_object(Bucket=bucket, Key="ln/big.bin", Body=big)
    fingerprints = storage.download_rule(SyncRule(bucket, "ln/", tmp_path / "link"))
    assert set(fingerprints) == {"sub/small.bin", "big.bin"}
    assert (real / "sub" / "small.bin").read_bytes() == small
    assert (real / "big.bin").read_bytes() == big


def test_small_bodies_are_read_in_one_call(storage, bucket, tmp_path):
    """A body of at most one chunk is read whole (one read() of its exact length, not read
    calls of READ_CHUNK bytes, each of which makes http.client allocate a chunk-sized
    buffer); a larger one still streams in chunks."""
    from agent.storage import READ_CHUNK

    storage.client.put_object(Bucket=bucket, Key="rd/small.bin", Body=os.urandom(65536))
    storage.client.put_object(Bucket=bucket, Key="rd/large.bin",
                              Body=os.urandom(READ_CHUNK + 5))
    reads: dict[str, list] = {}
    real_open = storage._open

    def counting_open(bucket_name, key, *args, **kwargs):
        read, done, encoding, length = real_open(bucket_name, key, *args, **kwargs)

        def read_logged(*read_args):
            reads.setdefault(key, []).append(read_args)
            return read(*read_args)
        return read_logged, done, encoding, length

    storage._open = counting_open
    storage.download_rule(SyncRule(bucket, "rd/", tmp_path / "down"))
    assert reads["rd/small.bin"] == [()]
    assert all(args == (READ_CHUNK,) for args in reads["rd/large.bin"])
    assert (tmp_path / "down" / "small.bin").stat().st_size == 65536
    assert (tmp_path / "down" / "large.bin").stat().st_size == READ_CHUNK + 5


def _small_files(source, count: int) -> list[str]:
    source.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (source / f"f-{i}.bin").write_bytes(os.urandom(1024))
    return [f"f-{i}.bin" for i in range(count)]


def test_the_first_small_put_into_a_bucket_goes_alone(storage, bucket, tmp_path, monkeypatch):
    """SeaweedFS answers PUTs that arrive while it creates a new bucket's first volume about
    1 s late: the first small PUT into a bucket this Storage has not written to goes alone,
    the others start once it is answered, and then run in parallel again."""
    # The others wait 1 s at most; on a loaded machine the first PUT (with its volume being
    # created) can take longer than that, so the wait is lengthened to test the order alone.
    monkeypatch.setattr("agent.storage.FIRST_WRITE_WAIT_S", 30.0)
    rels = _small_files(tmp_path / "up", 9)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=10)  # passes only with two PUTs in flight at once
    real_put = storage._put_small_now

    def recording_put(rule, key, f, before):
        with lock:
            first = not events
            events.append(("start", key))
            later = sum(1 for kind, _ in events if kind == "start")
        if first:
            time.sleep(0.3)  # room for the others to start too early, were they not held
        elif later <= 3:
            pair.wait()  # the next two PUTs meet here: they are sent in parallel
        real_put(rule, key, f, before)
        with lock:
            events.append(("end", key))

    storage._put_small_now = recording_put
    rule = SyncRule(bucket, "gate/", tmp_path / "up")
    assert storage.upload_files(rule, rels) == []
    first_key = events[0][1]
    assert events[:2] == [("start", first_key), ("end", first_key)]
    assert sorted(o["Key"] for o in storage.list_objects(bucket, "gate/")) == sorted(
        "gate/" + rel for rel in rels)


def test_later_small_puts_into_a_written_bucket_do_not_wait(storage, bucket, tmp_path):
    """Once a bucket has been written to, no PUT waits for another: all of a batch are in
    flight at once (the barrier would break, and the uploads fail, if one went first)."""
    rels = _small_files(tmp_path / "up", 4)
    rule = SyncRule(bucket, "nowait/", tmp_path / "up")
    assert storage.upload_files(rule, rels[:1]) == []
    together = threading.Barrier(len(rels), timeout=10)
    real_put = storage._put_small_now

    def meeting_put(rule, key, f, before):
        together.wait()
        real_put(rule, key, f, before)

    storage._put_small_now = meeting_put
    assert storage.upload_files(rule, rels) == []


def test_a_failed_first_put_lets_the_others_go(storage, bucket, tmp_path, monkeypatch):
    """A first PUT that fails opens the gate at once (the others do not sit out the wait),
    and is retried like any other failure."""
    monkeypatch.setattr("agent.storage.FIRST_WRITE_WAIT_S", 60.0)
    rels = _small_files(tmp_path / "up", 6)
    failed_once: list[str] = []
    lock = threading.Lock()
    real_put = storage._put_small_now

    def failing_first_put(rule, key, f, before):
        with lock:
            fail = not failed_once
            if fail:
                failed_once.append(key)
        if fail:
            raise RuntimeError("store refused the first PUT")
        real_put(rule, key, f, before)

    storage._put_small_now = failing_first_put
    rule = SyncRule(bucket, "fail/", tmp_path / "up")
    started = time.monotonic()
    assert storage.upload_files(rule, rels) == []
    assert time.monotonic() - started < 30  # nobody waited out the 60 s
    assert len(sorted(o["Key"] for o in storage.list_objects(bucket, "fail/"))) == len(rels)


def test_pwrite_all_writes_in_pieces_and_finishes_short_writes(tmp_path, monkeypatch):
    """A chunk goes to its file WRITE_PIECE bytes per pwrite at most (1 MiB writes made the
    page cache use large folios, which cost seconds of system time per GiB: docs/agent.md,
    "The 1 GiB download"), and a short write is continued where it stopped."""
    from agent.storage import WRITE_PIECE, _pwrite_all

    data = os.urandom(3 * WRITE_PIECE + 123)
    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd, piece, offset):
        calls.append((len(piece), offset))
        return real_pwrite(fd, bytes(piece)[:WRITE_PIECE // 3 + 1], offset)  # a short write

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 7 + len(data) + 5)
        assert _pwrite_all(fd, data, 7) == len(data)
    finally:
        os.close(fd)
    assert all(size <= WRITE_PIECE for size, _ in calls)
    assert calls[0] == (WRITE_PIECE, 7) and calls[1][1] == 7 + WRITE_PIECE // 3 + 1
    assert (tmp_path / "f").read_bytes() == bytes(7) + data + bytes(5)


def test_ranged_download_writes_every_byte_once_in_small_pieces(serial_storage, bucket,
                                                                tmp_path, monkeypatch):
    """Parts written in WRITE_PIECE pwrites, short ones continued, land byte for byte."""
    from agent.storage import WRITE_PIECE

    body = os.urandom(11 * 1024 * 1024 + 77)  # three ranges of 5, 5 and 1 MiB + 77 bytes
    serial_storage.client.put_object(Bucket=bucket, Key="pw/big.bin", Body=body)
    real_pwrite = os.pwrite
    sizes = []

    def short_pwrite(fd, piece, offset):
        sizes.append(len(piece))
        return real_pwrite(fd, bytes(piece)[:len(piece) - 1 or 1], offset)  # one byte short

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    serial_storage.download_rule(SyncRule(bucket, "pw/", tmp_path / "down"))
    assert (tmp_path / "down" / "big.bin").read_bytes() == body
    assert sizes and max(sizes) <= WRITE_PIECE


@pytest.mark.parametrize("size", [0, 100, 32 * 1024, 2 * 32 * 1024 + 5, 1024 * 1024])
def test_write_all_writes_in_pieces_and_finishes_short_writes(tmp_path, monkeypatch, size):
    """A streamed chunk goes out WRITE_PIECE bytes per write at most (a body up to one piece
    in one call), every short write continued."""
    from agent.storage import WRITE_PIECE, _write_all

    data = os.urandom(size)
    real_write = os.write
    calls = []

    def short_write(fd, piece):
        calls.append(len(piece))
        return real_write(fd, bytes(piece)[:max(1, len(piece) - 7)])  # 7 bytes short

    monkeypatch.setattr(os, "write", short_write)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert all(0 < n <= WRITE_PIECE for n in calls) or size == 0
    assert calls[0] == min(size, WRITE_PIECE)
