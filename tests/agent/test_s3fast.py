"""The lean client's own HTTP/1.1 GET (agent.s3fast), against a loopback server that sends
exactly the bytes a test scripts: framings, reused and stale connections, short bodies, errors
and timeouts must surface as they did through urllib3."""

import socket
import threading

import pytest
from botocore.credentials import Credentials
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from agent import blame
from agent.paths import SyncRule
from agent.s3fast import FastS3, S3RequestError
from agent.storage import ObjectChanged, Storage
from tests.support.net import free_port

HANG = object()  # a scripted reply: say nothing until the test ends


def answer(status: int, body: bytes = b"", headers: dict | None = None) -> bytes:
    """A well-formed answer with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ScriptedStore:
    """Answers the n-th request with the n-th reply: (bytes to send, close afterwards?) or
    HANG. Records each request's head and how many connections were made."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, pending = pending.split(b"\r\n\r\n", 1)
                self.requests.append(head)
                reply = self.replies.pop(0)
                if reply is HANG:
                    self.stop.wait()
                    return
                data, close = reply
                conn.sendall(data)
                if close:
                    return

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.fixture
def scripted():
    stores = []

    def make(*replies):
        stores.append(ScriptedStore(*replies))
        return stores[-1], FastS3(stores[-1].url, "us-east-1", Credentials("AK", "SK"),
                                  pool_size=4, timeout=5)

    yield make
    for store in stores:
        store.close()


def test_a_get_reads_its_body_and_reuses_the_connection(scripted):
    body = bytes(range(256)) * 300
    store, fast = scripted((answer(200, body, {"ETag": '"e1"', "Content-Encoding": "gzip"}),
                            False), (answer(206, b"abc"), False))
    response = fast.get("bkt", "dir/a b+c.bin", (0, 99), if_match='"e1"')
    assert response.status == 200
    assert response.headers.get("ETag") == '"e1"'
    assert response.headers.get("content-encoding") == "gzip"
    assert response.read(1000) + response.read() == body
    assert response.read() == b""
    response.release_conn()
    second = fast.get("bkt", "b")
    assert (second.status, second.read()) == (206, b"abc")
    second.release_conn()
    assert store.connections == 1
    head = store.requests[0].decode()
    assert head.startswith("GET /bkt/dir/a%20b%2Bc.bin HTTP/1.1\r\n")
    for line in ("Range: bytes=0-99", 'If-Match: "e1"', "x-amz-content-sha256: ",
                 "Authorization: AWS4-HMAC-SHA256 Credential=AK/"):
        assert "\r\n" + line in head


def test_a_chunked_body_is_decoded(scripted):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    store, fast = scripted((chunked, False), (answer(200, b"next"), False))
    response = fast.get("bkt", "k")
    assert response.read(3) + response.read() == b"hello world"
    response.release_conn()
    again = fast.get("bkt", "k")
    assert again.read() == b"next"
    assert store.connections == 1  # the chunked body was read to its end: reused


def test_a_body_without_length_ends_at_the_close(scripted):
    store, fast = scripted((b"HTTP/1.1 200 OK\r\n\r\nuntil the end", True),
                           (answer(200, b"x"), False))
    response = fast.get("bkt", "k")
    assert response.read() == b"until the end"
    response.release_conn()
    assert fast.get("bkt", "k").read() == b"x"
    assert store.connections == 2


def test_a_short_body_is_an_error_judged_storage_unreachable(scripted):
    store, fast = scripted((answer(200, b"0123456789")[:-6], True))
    response = fast.get("bkt", "k")
    with pytest.raises(ProtocolError, match="4 of 10") as caught:
        response.read()
    response.release_conn()
    assert blame.node_fault(caught.value).startswith("node failure: storage unreachable")


def test_error_statuses_raise_with_their_body_and_keep_the_connection(scripted):
    store, fast = scripted((answer(503, b"<Error>SlowDown</Error>"), False),
                           (answer(412, b"<Error>PreconditionFailed</Error>"), False),
                           (answer(200, b"ok"), False))
    with pytest.raises(S3RequestError, match="HTTP 503 b'<Error>SlowDown") as caught:
        fast.get("bkt", "k")
    assert caught.value.status == 503
    with pytest.raises(S3RequestError) as caught:
        fast.get("bkt", "k", if_match='"old"')
    assert caught.value.status == 412
    assert fast.get("bkt", "k").read() == b"ok"
    assert store.connections == 1


def test_a_connection_the_store_closed_while_idle_is_replaced(scripted):
    """The store closes a kept-alive connection after answering: the next GET finds it
    closed before any byte of its answer and is sent again, once, on a new connection."""
    store, fast = scripted((answer(200, b"one"), True), (answer(200, b"two"), False))
    first = fast.get("bkt", "k")
    assert first.read() == b"one"
    first.release_conn()
    assert fast.get("bkt", "k").read() == b"two"
    assert store.connections == 2


def test_a_new_connection_closed_without_an_answer_is_not_retried(scripted):
    store, fast = scripted((b"", True), (answer(200, b"never"), False))
    with pytest.raises(ProtocolError, match="closed by the store"):
        fast.get("bkt", "k")
    assert store.connections == 1


def test_an_unread_body_is_never_left_on_a_reused_connection(scripted):
    store, fast = scripted((answer(200, b"a" * 5000), False), (answer(200, b"b"), False))
    fast.get("bkt", "k").release_conn()  # e.g. ObjectChanged: the body is not wanted
    assert fast.get("bkt", "k").read() == b"b"
    assert store.connections == 2


def test_garbage_instead_of_an_answer_is_a_protocol_error(scripted):
    store, fast = scripted((b"SSH-2.0-OpenSSH\r\n\r\n", True),
                           (b"HTTP/1.1 200 OK\r\n broken header\r\n\r\n", True),
                           (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", True))
    for match in ("status line", "malformed header", "Content-Length"):
        with pytest.raises(ProtocolError, match=match):
            fast.get("bkt", "k")


def test_an_interim_answer_is_skipped(scripted):
    store, fast = scripted((b"HTTP/1.1 100 Continue\r\n\r\n" + answer(200, b"final"), False))
    assert fast.get("bkt", "k").read() == b"final"


def test_a_store_that_never_answers_times_out(scripted):
    store = ScriptedStore(HANG)
    try:
        fast = FastS3(store.url, "us-east-1", Credentials("AK", "SK"), pool_size=1, timeout=0.3)
        with pytest.raises(Urllib3TimeoutError) as caught:
            fast.get("bkt", "k")
        assert blame.node_fault(caught.value).startswith("node failure: storage unreachable")
    finally:
        store.close()


def test_no_store_listening_is_a_connection_error():
    fast = FastS3(f"http://127.0.0.1:{free_port()}", "us-east-1", Credentials("AK", "SK"),
                  pool_size=1)
    with pytest.raises(NewConnectionError) as caught:
        fast.get("bkt", "k")
    assert isinstance(caught.value, HTTPError)
    assert blame.node_fault(caught.value).startswith("node failure: storage unreachable")


def test_tls_endpoints_stay_on_urllib3():
    fast = FastS3("https://s3.example.invalid", "us-east-1", Credentials("AK", "SK"),
                  pool_size=1)
    assert not fast.lean_get


@pytest.fixture
def storage_on(make_config, monkeypatch):
    """storage_on(store) -> a Storage whose endpoint is that scripted store."""
    made = []

    def build(store):
        for name, value in {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
                            "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(name, value)  # botocore's credential chain reads os.environ
        made.append(Storage(make_config(AWS_ENDPOINT_URL_S3=store.url, MAX_RETRIES=1)))
        assert made[-1].fast is not None and made[-1].fast.lean_get
        return made[-1]

    yield build
    for storage in made:
        storage.close()


def test_a_short_body_leaves_no_file_behind(storage_on, tmp_path):
    store = ScriptedStore((answer(200, b"0123456789", {"ETag": '"e"'})[:-4], True))
    try:
        storage = storage_on(store)
        target = tmp_path / "down"
        target.mkdir()
        with pytest.raises(ProtocolError):
            storage._get_to_file(SyncRule("bkt", "p/", target), "p/f.bin",
                                 str(target / "f.bin"), False, '"e"')
        assert list(target.iterdir()) == []
    finally:
        store.close()


def test_another_version_in_the_answer_or_a_412_is_object_changed(storage_on, tmp_path):
    """If-Match pinning holds on the lean path: a store that ignores If-Match and answers
    another ETag, or one that refuses it (412), restarts the file; neither leaves a file."""
    store = ScriptedStore((answer(200, b"new", {"ETag": '"other"'}), False),
                          (answer(412, b"<Error>PreconditionFailed</Error>"), False))
    try:
        storage = storage_on(store)
        target = tmp_path / "down"
        target.mkdir()
        for _ in range(2):
            with pytest.raises(ObjectChanged):
                storage._get_to_file(SyncRule("bkt", "p/", target), "p/f.bin",
                                     str(target / "f.bin"), False, '"e"')
        assert list(target.iterdir()) == []
        assert 'If-Match: "e"' in store.requests[0].decode()
    finally:
        store.close()
