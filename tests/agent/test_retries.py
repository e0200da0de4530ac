"""Exactly one retry layer per call: against SeaweedFS behind a proxy that answers 503 on
command and counts requests, a call that keeps failing is sent exactly MAX_RETRIES times (not
its square or cube, as when botocore retried inside our loops), and one that fails a few times
still succeeds. See docs/agent.md, "Retries"."""

import os
import secrets

import pytest

from agent import retry
from agent.client import ApiClient, ApiUnavailable
from agent.paths import SyncRule
from agent.storage import Storage, TransferFailed
from tests.support.loopback_http import LoopbackServer
from tests.support.s3_faults import FaultProxy

ATTEMPTS = 3  # MAX_RETRIES here: 3 attempts, where layered retries would make 9 or 27
MB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(seaweed):
    """One bucket for the module (each test keeps to its own prefix): SeaweedFS gives every
    bucket volumes of its own, and this suite's store has few (tests/support/seaweed.py)."""
    return seaweed.create_bucket("retries-" + secrets.token_hex(6))


@pytest.fixture
def proxy(seaweed):
    fault_proxy = FaultProxy(seaweed.endpoint)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(params=["lean", "botocore"])
def storage(request, make_config, seaweed, proxy):
    """Small objects on the lean signed path and on botocore, both through the proxy."""
    store = Storage(make_config(seaweed, AWS_ENDPOINT_URL=proxy.url,
                                AWS_ENDPOINT_URL_S3=proxy.url, MAX_RETRIES=ATTEMPTS,
                                KELPIE_MULTIPART_THRESHOLD_MB=5, KELPIE_MULTIPART_CHUNK_MB=5,
                                KELPIE_FAST_SMALL_TRANSFERS=request.param == "lean"))
    assert (store.fast is not None) == (request.param == "lean")
    yield store
    store.close()


def _put(storage, bucket, key, data):
    storage.client.put_object(Bucket=bucket, Key=key, Body=data)


def test_attempts_pause_between_tries_and_not_after_the_last(monkeypatch):
    slept = []
    monkeypatch.setattr(retry, "sleep", lambda seconds, stop=None: slept.append(seconds))
    assert list(retry.Attempts(3)) == [1, 2, 3]
    assert len(slept) == 2 and all(0 <= s <= 0.25 * 2 ** (i + 1) for i, s in enumerate(slept))


def test_a_small_download_that_keeps_failing_is_sent_exactly_max_retries_times(
        storage, proxy, bucket, tmp_path):
    _put(storage, bucket, "d/a.bin", b"a" * 1000)
    proxy.fail = lambda seen: seen.method == "GET" and seen.key == "d/a.bin"
    with pytest.raises(TransferFailed):
        storage.download_rule(SyncRule(bucket, "d/", tmp_path / "down"))
    assert proxy.count("GET", "d/a.bin") == ATTEMPTS


def test_a_small_download_that_fails_twice_succeeds(storage, proxy, bucket, tmp_path):
    _put(storage, bucket, "t/a.bin", b"a" * 1000)
    proxy.fail_first(ATTEMPTS - 1, lambda seen: seen.method == "GET" and seen.key == "t/a.bin")
    storage.download_rule(SyncRule(bucket, "t/", tmp_path / "down"))
    assert (tmp_path / "down" / "a.bin").read_bytes() == b"a" * 1000
    assert proxy.count("GET", "t/a.bin") == ATTEMPTS


def test_a_failing_range_is_retried_alone_and_the_object_is_not_tried_again(
        storage, proxy, bucket, tmp_path):
    data = os.urandom(12 * MB)  # three 5 MiB ranges
    _put(storage, bucket, "r/big.bin", data)
    second = f"bytes={5 * MB}-{10 * MB - 1}"
    proxy.fail = lambda seen: seen.method == "GET" and seen.range == second
    with pytest.raises(TransferFailed):
        storage.download_rule(SyncRule(bucket, "r/", tmp_path / "down"))
    assert proxy.count("GET", "r/big.bin", range=second) == ATTEMPTS
    # The other ranges once each at most: the whole object was not downloaded again.
    assert proxy.count("GET", "r/big.bin") <= ATTEMPTS + 2
    assert not (tmp_path / "down" / "big.bin").exists()


def test_a_range_that_fails_twice_still_completes_the_file(storage, proxy, bucket, tmp_path):
    data = os.urandom(12 * MB)
    _put(storage, bucket, "rt/big.bin", data)
    second = f"bytes={5 * MB}-{10 * MB - 1}"
    proxy.fail_first(ATTEMPTS - 1, lambda seen: seen.method == "GET" and seen.range == second)
    storage.download_rule(SyncRule(bucket, "rt/", tmp_path / "down"))
    assert (tmp_path / "down" / "big.bin").read_bytes() == data
    assert proxy.count("GET", "rt/big.bin", range=second) == ATTEMPTS
    assert proxy.count("GET", "rt/big.bin") == ATTEMPTS + 2


def test_a_small_upload_that_keeps_failing_is_sent_exactly_max_retries_times(
        storage, proxy, bucket, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"a" * 1000)
    proxy.fail = lambda seen: seen.method == "PUT" and seen.key == "u/a.bin"
    assert storage.upload_files(SyncRule(bucket, "u/", tmp_path), ["a.bin"]) == ["a.bin"]
    assert proxy.count("PUT", "u/a.bin") == ATTEMPTS


def test_a_small_upload_that_fails_twice_succeeds(storage, proxy, bucket, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"a" * 1000)
    proxy.fail_first(ATTEMPTS - 1, lambda seen: seen.method == "PUT" and seen.key == "ut/a.bin")
    assert storage.upload_files(SyncRule(bucket, "ut/", tmp_path), ["a.bin"]) == []
    assert proxy.count("PUT", "ut/a.bin") == ATTEMPTS
    stored = storage.client.get_object(Bucket=bucket, Key="ut/a.bin")["Body"].read()
    assert stored == b"a" * 1000


def test_a_failing_part_is_retried_alone_and_the_upload_is_not_restarted(
        storage, proxy, bucket, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(12 * MB))
    proxy.fail = lambda seen: seen.method == "PUT" and seen.part_number == 2
    assert storage.upload_files(SyncRule(bucket, "m/", tmp_path), ["big.bin"]) == ["big.bin"]
    assert proxy.count("PUT", "m/big.bin", part_number=2) == ATTEMPTS
    assert proxy.count("POST", "m/big.bin", query="uploads") == 1  # one multipart upload
    assert storage.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_part_that_fails_twice_still_completes_the_upload(storage, proxy, bucket, tmp_path):
    data = os.urandom(12 * MB)
    (tmp_path / "big.bin").write_bytes(data)
    proxy.fail_first(ATTEMPTS - 1,
                     lambda seen: seen.method == "PUT" and seen.part_number == 2)
    assert storage.upload_files(SyncRule(bucket, "mt/", tmp_path), ["big.bin"]) == []
    assert proxy.count("PUT", "mt/big.bin", part_number=2) == ATTEMPTS
    assert storage.client.get_object(Bucket=bucket, Key="mt/big.bin")["Body"].read() == data


def test_a_metadata_call_is_retried_by_us_alone(storage, proxy, bucket, tmp_path):
    """HEAD has no transfer loop around it: tried MAX_RETRIES times by Storage, once each
    by botocore."""
    _put(storage, bucket, "h/a.bin", b"a")
    proxy.fail = lambda seen: seen.method == "HEAD" and seen.key == "h/a.bin"
    with pytest.raises(Exception):  # noqa: B017 - botocore's ClientError for the 503
        storage._current(bucket, "h/a.bin")
    assert proxy.count("HEAD", "h/a.bin") == ATTEMPTS
    proxy.fail_first(ATTEMPTS - 1, lambda seen: seen.method == "HEAD")
    assert storage._current(bucket, "h/a.bin")[0] == 1


class Unavailable(LoopbackServer):
    """An API that answers 503 to the first `failures` calls, then 200."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.calls = failures, 0

    def respond(self, request):
        self.calls += 1
        if self.calls <= self.failures:
            return 503, {"error": "unavailable", "message": "try later", "field": None}
        return 200, {"ok": True}


@pytest.mark.parametrize("failures", [ATTEMPTS - 1, 100])
def test_an_api_call_is_sent_at_most_max_retries_times(make_config, imds, failures):
    api = Unavailable(failures)
    api.start()
    try:
        client = ApiClient(make_config(KELPIE_API_URL=api.url, MAX_RETRIES=ATTEMPTS), imds)
        if failures < ATTEMPTS:
            assert client.request("GET", "/x") == (200, {"ok": True})
        else:
            with pytest.raises(ApiUnavailable):
                client.request("GET", "/x")
        assert api.calls == ATTEMPTS
    finally:
        api.stop()
