"""The checkpoint store's guarantees, each attacked on real SeaweedFS with real child processes:
deletions never overtake uploads, a dying writer never replaces a good object, a directory is
committed as one, symlinks are followed or fail loudly, files of a new directory are not sent
mid-write."""

import contextlib
import os
import signal
import sys
import textwrap
import threading

import pytest

from agent import commits
from agent.paths import SyncRule
from agent.runner import ChildProcess
from agent.storage import Storage
from agent.sync import DirectorySync
from agent.writers import Writers
from tests.support.net import wait_until

MIB = 1024 * 1024


@pytest.fixture
def storage(make_config, seaweed):
    store = Storage(make_config(seaweed))
    yield store
    store.close()


def keys(storage, bucket, prefix):
    return sorted(o["Key"] for o in storage.list_objects(bucket, prefix)
                  if not commits.is_marker(o["Key"]))


def body(storage, bucket, key) -> bytes:
    return storage.client.get_object(Bucket=bucket, Key=key)["Body"].read()


def child(tmp_path, script: str) -> ChildProcess:
    """A real child process (its own session, as the agent runs jobs) running `script`."""
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(script))
    process = ChildProcess(sys.executable, [str(path)], dict(os.environ), tmp_path)
    process.start()
    return process


def wait_file(path, timeout=20):
    wait_until(path.exists, timeout=timeout, message=f"{path} never appeared")


# --- deletions never overtake uploads ---

@contextlib.contextmanager
def upload_held_for_a_deletion(storage, held: str):
    """Yields the store's uploads and deletions as they finish ("uploaded REL", "deleted REL");
    the upload of `held` waits until a deletion ran (the bug) or 3 s passed, so that a deletion
    that does not wait for it gets every chance to go first."""
    events: list[str] = []
    deleted = threading.Event()
    real_upload, real_delete = storage.upload_files, storage.delete

    def slow_upload(rule_, rels, on_done=None, **kwargs):
        if rels == [held]:
            deleted.wait(3)
        result = real_upload(rule_, rels, on_done, **kwargs)
        events.append(f"uploaded {rels[0]}")
        return result

    def recording_delete(rule_, rel):
        events.append(f"deleted {rel}")
        deleted.set()
        real_delete(rule_, rel)

    storage.upload_files, storage.delete = slow_upload, recording_delete
    try:
        yield events
    finally:
        storage.upload_files, storage.delete = real_upload, real_delete


def test_rotation_delete_waits_for_the_new_checkpoint(storage, bucket, tmp_path):
    """Keep-last-1: ckpt-2 is written, ckpt-1 deleted while ckpt-2 still uploads. The bucket
    must never be without a checkpoint: ckpt-1's object goes only after ckpt-2's is durable."""
    local = tmp_path / "rot"
    rule = SyncRule(bucket, "rot/", local)
    sync = DirectorySync(rule, storage, known={})
    with upload_held_for_a_deletion(storage, "ckpt-2") as events:
        sync.start()
        try:
            (local / "ckpt-1").write_bytes(b"1" * 1000)
            wait_until(lambda: "uploaded ckpt-1" in events, timeout=10)
            (local / "ckpt-2").write_bytes(b"2" * 1000)
            (local / "ckpt-1").unlink()
            wait_until(lambda: "deleted ckpt-1" in events, timeout=20)
        finally:
            sync.abandon()
    assert events.index("uploaded ckpt-2") < events.index("deleted ckpt-1"), events
    assert keys(storage, bucket, "rot/") == ["rot/ckpt-2"]


def test_polled_deletion_still_waits_for_files_written_before_it(storage, bucket, tmp_path):
    """The polling watcher reports a deletion at once but a new file only once it held still:
    the deletion must still wait for the file written before it."""
    local = tmp_path / "poll"
    rule = SyncRule(bucket, "poll/", local)
    sync = DirectorySync(rule, storage, known={}, watcher_mode="poll", poll_interval=0.5)
    with upload_held_for_a_deletion(storage, "b") as events:
        sync.start()
        try:
            (local / "a").write_bytes(b"a")
            wait_until(lambda: "uploaded a" in events, timeout=10)
            (local / "b").write_bytes(b"b")
            (local / "a").unlink()
            wait_until(lambda: "deleted a" in events, timeout=10)
        finally:
            sync.abandon()
    assert events.index("uploaded b") < events.index("deleted a"), events


def test_shutdown_out_of_time_drops_deletions_instead_of_running_them(storage, bucket, tmp_path):
    local = tmp_path / "grace"
    rule = SyncRule(bucket, "grace/", local)
    (local).mkdir()
    (local / "old").write_bytes(b"old")
    known = {}
    storage.upload_files(rule, ["old"], on_done=lambda rel, fp: known.__setitem__(rel, fp))
    sync = DirectorySync(rule, storage, known=known)
    hold = threading.Event()
    real_upload = storage.upload_files

    def stuck_upload(rule_, rels, on_done=None, **kwargs):
        hold.wait(10)  # longer than the grace below
        return real_upload(rule_, rels, on_done, **kwargs)

    storage.upload_files = stuck_upload
    try:
        sync.start()
        (local / "new").write_bytes(b"new")
        (local / "old").unlink()
        errors = sync.finish(timeout=1.0)
    finally:
        hold.set()
        storage.upload_files = real_upload
    assert "new" in errors
    # The stuck upload ends after all; the deletion it held back must never run.
    wait_until(lambda: "grace/new" in keys(storage, bucket, "grace/"), timeout=20)
    assert keys(storage, bucket, "grace/") == ["grace/new", "grace/old"]


# --- dying writers ---

IN_PLACE = """
    import os, pathlib, time
    out = pathlib.Path({local!r})
    (out / "last.pt").write_bytes(b"good" * 65536)
    go = pathlib.Path({go!r})
    while not go.exists():
        time.sleep(0.01)
    with open(out / "last.pt", "wb") as f:
        f.write(b"torn" * 32768)
        f.flush()
        pathlib.Path({half!r}).touch()
        time.sleep(600)
"""


@pytest.mark.parametrize("how", ["child SIGKILL", "forwarded SIGTERM"])
def test_torn_in_place_save_never_replaces_the_good_object(storage, bucket, tmp_path, how,
                                                           caplog):
    local = tmp_path / "inplace"
    local.mkdir()
    rule = SyncRule(bucket, "inplace/", local)
    # Margin 0 for the SIGTERM case: only "open when the signal was forwarded" can catch it.
    writers = Writers(margin=1.0 if how == "child SIGKILL" else 0.0)
    sync = DirectorySync(rule, storage, known={}, writers=writers)
    sync.start()
    go, half = tmp_path / "go", tmp_path / "half"
    process = child(tmp_path, IN_PLACE.format(local=str(local), go=str(go), half=str(half)))
    writers.attach(process)
    try:
        wait_until(lambda: keys(storage, bucket, "inplace/") == ["inplace/last.pt"], timeout=20)
        go.touch()
        wait_file(half)
        if how == "child SIGKILL":
            os.killpg(process.pid, signal.SIGKILL)  # as the OOM killer would
        else:
            writers.note_signal(signal.SIGTERM)
            process.signal_group(signal.SIGTERM)
        assert process.wait(10)
        assert sync.finish(timeout=20) == {}
    finally:
        process.stop(1)
        sync.abandon()
    assert body(storage, bucket, "inplace/last.pt") == b"good" * 65536
    assert sync.skipped == {"last.pt": "written by a dying writer"}
    assert "skipped last.pt: written by a dying writer" in caplog.text


def test_rotation_after_a_torn_save_keeps_the_previous_checkpoint(storage, bucket, tmp_path):
    """The child finishes ckpt-2, deletes ckpt-1 and dies at once (within the margin): ckpt-2
    counts as torn, so ckpt-1 must not be deleted either."""
    local = tmp_path / "kl1"
    local.mkdir()
    rule = SyncRule(bucket, "kl1/", local)
    writers = Writers(margin=1.0)
    sync = DirectorySync(rule, storage, known={}, writers=writers)
    sync.start()
    go = tmp_path / "go"
    process = child(tmp_path, f"""
        import os, pathlib, signal, time
        out = pathlib.Path({str(local)!r})
        (out / "ckpt-1").write_bytes(b"1" * 1000)
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.01)
        (out / "ckpt-2").write_bytes(b"2" * 1000)
        (out / "ckpt-1").unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    writers.attach(process)
    try:
        wait_until(lambda: keys(storage, bucket, "kl1/") == ["kl1/ckpt-1"], timeout=20)
        go.touch()
        assert process.wait(10)
        assert sync.finish(timeout=20) == {}
    finally:
        sync.abandon()
    assert keys(storage, bucket, "kl1/") == ["kl1/ckpt-1"]


# --- directories committed as one ---

def test_directory_save_is_committed_by_a_marker(storage, bucket, tmp_path):
    local = tmp_path / "dirs"
    rule = SyncRule(bucket, "dirs/", local)
    sync = DirectorySync(rule, storage, known={})
    sync.start()
    try:
        save = local / "checkpoint-1"
        save.mkdir()
        for name, size in (("model.bin", 3 * MIB), ("optim.bin", 1 * MIB), ("state.json", 10)):
            (save / name).write_bytes(os.urandom(size))
        marker_key = commits.marker_key("dirs/", "checkpoint-1")

        def committed():
            raw = storage.get_marker(rule, "checkpoint-1")
            return raw and commits.decode(raw)

        files = wait_until(lambda: (c := committed()) and len(c) == 3 and c, timeout=20)
        assert sorted(files) == ["model.bin", "optim.bin", "state.json"]
        assert files["model.bin"]["size"] == 3 * MIB
        assert marker_key in [o["Key"] for o in storage.list_objects(bucket, "dirs/")]
        # Deleting the directory deletes its objects, then its marker.
        for path in save.iterdir():
            path.unlink()
        save.rmdir()
        wait_until(lambda: list(storage.list_objects(bucket, "dirs/")) == [], timeout=20)
    finally:
        sync.abandon()


def test_restore_skips_directories_that_are_not_committed(storage, bucket, tmp_path):
    put = storage.client.put_object
    put(Bucket=bucket, Key="r/top.ckpt", Body=b"top")
    # checkpoint-1: committed, whole.
    for name in ("a", "b"):
        put(Bucket=bucket, Key=f"r/checkpoint-1/{name}", Body=name.encode())
    rule = SyncRule(bucket, "r/", tmp_path / "unused")
    storage.put_marker(rule, "checkpoint-1", commits.encode(
        "committed", storage.unit_objects(rule, "checkpoint-1")))
    # checkpoint-2: opened, half uploaded, never committed.
    storage.put_marker(rule, "checkpoint-2", commits.encode("open", {}))
    put(Bucket=bucket, Key="r/checkpoint-2/a", Body=b"half")
    # checkpoint-3: committed, then one file replaced by a torn upload.
    for name in ("a", "b"):
        put(Bucket=bucket, Key=f"r/checkpoint-3/{name}", Body=name.encode())
    storage.put_marker(rule, "checkpoint-3", commits.encode(
        "committed", storage.unit_objects(rule, "checkpoint-3")))
    put(Bucket=bucket, Key="r/checkpoint-3/b", Body=b"torn!")
    # checkpoint-4: committed, then an extra file of a newer save appeared.
    put(Bucket=bucket, Key="r/checkpoint-4/a", Body=b"a")
    storage.put_marker(rule, "checkpoint-4", commits.encode(
        "committed", storage.unit_objects(rule, "checkpoint-4")))
    put(Bucket=bucket, Key="r/checkpoint-4/extra", Body=b"x")
    # legacy: no marker at all (an older agent, or by hand): downloaded as before.
    put(Bucket=bucket, Key="r/legacy/x", Body=b"x")

    target = tmp_path / "restore"
    got = storage.download_rule(SyncRule(bucket, "r/", target))

    assert sorted(got) == ["checkpoint-1/a", "checkpoint-1/b", "checkpoint-4/a", "legacy/x",
                           "top.ckpt"]
    assert not (target / "checkpoint-2").exists() and not (target / "checkpoint-3").exists()
    assert not any(p.name == commits.MARKER_NAME for p in target.rglob("*"))


def test_a_directory_half_uploaded_is_never_restored(storage, bucket, tmp_path):
    """The node dies after some files of a new save directory reached the bucket."""
    local = tmp_path / "half"
    rule = SyncRule(bucket, "half/", local)
    sync = DirectorySync(rule, storage, known={})
    real_upload = storage.upload_files
    storage.upload_files = lambda r, rels, on_done=None, **kwargs: (
        rels if rels[0].endswith("optim.bin") else real_upload(r, rels, on_done, **kwargs))
    sync.start()
    try:
        (local / "checkpoint-7").mkdir()
        (local / "checkpoint-7" / "model.bin").write_bytes(b"m" * 1000)
        (local / "checkpoint-7" / "optim.bin").write_bytes(b"o" * 1000)
        wait_until(lambda: keys(storage, bucket, "half/") == ["half/checkpoint-7/model.bin"],
                   timeout=20)
    finally:
        sync.abandon()  # the node vanished
        storage.upload_files = real_upload
    assert storage.get_marker(rule, "checkpoint-7") is not None  # opened before the first file
    assert storage.download_rule(SyncRule(bucket, "half/", tmp_path / "restore")) == {}


# --- symlinks ---

def test_symlinks_inside_are_uploaded_as_files_outside_fail_the_pass(storage, bucket,
                                                                     tmp_path):
    local = tmp_path / "links"
    local.mkdir()
    (local / "real.ckpt").write_bytes(b"data")
    (local / "latest.ckpt").symlink_to("real.ckpt")
    outside = tmp_path / "secret"
    outside.write_text("not yours")
    (local / "escape").symlink_to(outside)
    sync = DirectorySync(SyncRule(bucket, "links/", local), storage, known={})
    sync.start()
    errors = sync.finish(timeout=20)
    assert body(storage, bucket, "links/latest.ckpt") == b"data"
    assert "escape" in errors and "outside" in errors["escape"]
    assert "links/escape" not in keys(storage, bucket, "links/")


# --- files of a new directory ---

def test_files_of_a_new_directory_are_not_uploaded_mid_write(storage, bucket, tmp_path):
    """The child creates step-1/ and writes model.bin slowly: the watcher finds the file when
    it adds the new directory's watch, half-written and still open. Only the whole file may
    ever be uploaded."""
    local = tmp_path / "newdir"
    local.mkdir()
    rule = SyncRule(bucket, "newdir/", local)
    writers = Writers(margin=1.0)
    sync = DirectorySync(rule, storage, known={}, writers=writers)
    sizes: list[int] = []
    real_upload = storage.upload_files

    def recording(rule_, rels, on_done=None, **kwargs):
        sizes.append(os.path.getsize(local / rels[0]))
        return real_upload(rule_, rels, on_done, **kwargs)

    storage.upload_files = recording
    go, half = tmp_path / "go", tmp_path / "half"
    process = child(tmp_path, f"""
        import pathlib, time
        step = pathlib.Path({str(local)!r}) / "step-1"
        step.mkdir()
        with open(step / "model.bin", "wb") as f:
            f.write(b"x" * {2 * MIB})
            f.flush()
            pathlib.Path({str(half)!r}).touch()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.01)
            f.write(b"y" * {3 * MIB})
    """)
    writers.attach(process)
    sync.start()
    try:
        wait_file(half)
        # Give a broken gate every chance to send the half file: wait for the sync to look
        # at it (a found file is checked once it settled) many times over.
        with pytest.raises(TimeoutError):
            wait_until(lambda: sizes, timeout=1.5)
        go.touch()
        assert process.wait(10) and process.returncode == 0
        wait_until(lambda: keys(storage, bucket, "newdir/") == ["newdir/step-1/model.bin"],
                   timeout=20)
        assert sync.finish(timeout=20) == {}
    finally:
        storage.upload_files = real_upload
        sync.abandon()
    assert sizes and set(sizes) == {5 * MIB}, sizes


def test_a_save_directory_cut_short_by_a_kill_is_not_committed(storage, bucket, tmp_path):
    """The child writes checkpoint-2/model.bin, then is killed before optimizer.bin: the
    final pass must not commit checkpoint-2 as it stands (one file of two)."""
    local = tmp_path / "cut"
    local.mkdir()
    rule = SyncRule(bucket, "cut/", local)
    writers = Writers(margin=0.5)
    sync = DirectorySync(rule, storage, known={}, writers=writers, commit_quiet=1.0)
    sync.start()
    go = tmp_path / "go"
    process = child(tmp_path, f"""
        import os, pathlib, signal, time
        out = pathlib.Path({str(local)!r})
        (out / "checkpoint-1").mkdir()
        (out / "checkpoint-1" / "model.bin").write_bytes(b"m1")
        (out / "checkpoint-1" / "optimizer.bin").write_bytes(b"o1")
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.01)
        (out / "checkpoint-2").mkdir()
        (out / "checkpoint-2" / "model.bin").write_bytes(b"m2")
        time.sleep(0.3)  # preparing the optimizer state...
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    writers.attach(process)
    try:
        wait_until(lambda: len(commits.decode(storage.get_marker(rule, "checkpoint-1") or b"{}")
                               or {}) == 2, timeout=20)
        go.touch()
        assert process.wait(10)
        assert sync.finish(timeout=20) == {}
    finally:
        sync.abandon()
    restored = storage.download_rule(SyncRule(bucket, "cut/", tmp_path / "restore"))
    assert sorted(restored) == ["checkpoint-1/model.bin", "checkpoint-1/optimizer.bin"]
