"""DirectorySync: files complete → uploaded once; deletions follow; unchanged files not resent."""

import os
import statistics
import time

import pytest

from agent import commits
from agent.paths import SyncRule
from agent.storage import Storage
from agent.sync import DirectorySync
from tests.support.net import wait_until


@pytest.fixture
def storage(make_config, seaweed):
    store = Storage(make_config(seaweed))
    yield store
    store.close()


def keys(storage, bucket, prefix, markers=False):
    """The object keys under prefix; commit markers (agent.commits) only if asked for."""
    return sorted(o["Key"] for o in storage.list_objects(bucket, prefix)
                  if markers or not commits.is_marker(o["Key"]))


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_files_follow_the_directory(storage, bucket, tmp_path, mode):
    local = tmp_path / "ckpt"
    rule = SyncRule(bucket, f"{mode}/", local)
    sync = DirectorySync(rule, storage, known={}, watcher_mode=mode, poll_interval=0.05,
                         rescan_interval=30)
    sync.start()
    try:
        (local / "a.ckpt").write_text("1")
        (local / "sub").mkdir()
        (local / "sub" / "b.ckpt").write_text("2")
        tmp = local / ".c.tmp"
        tmp.write_text("3")
        os.replace(tmp, local / "c.ckpt")
        wait_until(lambda: keys(storage, bucket, f"{mode}/") == [
            f"{mode}/a.ckpt", f"{mode}/c.ckpt", f"{mode}/sub/b.ckpt"], timeout=10)
        # An object is listed a moment before its upload is counted: wait for the count.
        wait_until(lambda: sync.uploads == 3, timeout=10)
        uploads = sync.uploads
        (local / "a.ckpt").unlink()
        wait_until(lambda: f"{mode}/a.ckpt" not in keys(storage, bucket, f"{mode}/"), timeout=10)
        # Touching nothing else: a final pass sends nothing again.
        assert sync.finish(timeout=10) == {}
        assert sync.uploads == uploads
    finally:
        sync.abandon()


def test_downloaded_files_are_not_uploaded_again(storage, bucket, tmp_path):
    storage.client.put_object(Bucket=bucket, Key="known/x.ckpt", Body=b"x")
    rule = SyncRule(bucket, "known/", tmp_path / "ckpt")
    known = storage.download_rule(rule)
    sync = DirectorySync(rule, storage, known=known)
    sync.start()
    assert sync.finish(timeout=10) == {}
    assert sync.uploads == 0


def test_checkpoint_lag_is_small(storage, bucket, tmp_path):
    """From a checkpoint's close to its object being readable: p50 ≤ 0.5 s, p99 ≤ 2 s."""
    local = tmp_path / "lag"
    sync = DirectorySync(SyncRule(bucket, "lag/", local), storage, known={})
    sync.start()
    lags = []
    try:
        for i in range(20):
            payload = os.urandom(256 * 1024)
            with open(local / f"step-{i}.ckpt", "wb") as f:
                f.write(payload)
            closed = time.monotonic()
            wait_until(lambda i=i: _readable(storage, bucket, f"lag/step-{i}.ckpt"),
                       timeout=10, interval=0.01)
            lags.append(time.monotonic() - closed)
    finally:
        sync.abandon()
    assert statistics.median(lags) <= 0.5 and max(lags) <= 2.0, lags


def _readable(storage, bucket, key):
    try:
        storage.client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception:  # noqa: BLE001 - not there yet
        return False


def test_deletions_wait_until_the_job_is_confirmed_ours(storage, bucket, tmp_path):
    local = tmp_path / "gate"
    confirmed = {"yes": False}
    sync = DirectorySync(SyncRule(bucket, "gate/", local), storage, known={},
                         may_delete=lambda: confirmed["yes"])
    sync.start()
    try:
        (local / "a.ckpt").write_text("1")
        wait_until(lambda: keys(storage, bucket, "gate/") == ["gate/a.ckpt"], timeout=10)
        (local / "a.ckpt").unlink()
        time.sleep(1.0)  # several retry rounds of the deferred deletion
        assert keys(storage, bucket, "gate/") == ["gate/a.ckpt"]
        confirmed["yes"] = True
        wait_until(lambda: keys(storage, bucket, "gate/") == [], timeout=10)
    finally:
        sync.abandon()
