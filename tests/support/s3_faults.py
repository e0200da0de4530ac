"""A fault-injecting HTTP proxy on loopback in front of a real S3 store (SeaweedFS): it counts
every request by method, key and byte range, and answers 503 SlowDown-style errors instead of
forwarding the requests a test's rule picks. Requests are forwarded with their own Host header
and body untouched, so the client's signatures still hold."""

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection"}
FAULT_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
              b"<Message>injected by the test proxy</Message></Error>")


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    method: str
    key: str          # the object key (path after the bucket), "" for bucket-level requests
    query: str
    range: str | None

    @property
    def part_number(self) -> int | None:
        for item in self.query.split("&"):
            name, _, value = item.partition("=")
            if name == "partNumber":
                return int(value)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class FaultProxy:
    """`fail` is a predicate on a Seen request: True answers 503 without forwarding. `seen`
    lists every request in arrival order."""

    def __init__(self, upstream: str):
        parsed = urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.fail: Callable[[Seen], bool] = lambda seen: False
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue, as S3 does

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parsed = urlsplit(self.path)
                parts = parsed.path.lstrip("/").split("/", 1)
                seen = Seen(self.command, unquote(parts[1]) if len(parts) > 1 else "",
                            parsed.query, self.headers.get("Range"))
                with proxy._lock:
                    proxy.seen.append(seen)
                    failing = proxy.fail(seen)
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(FAULT_BODY)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(FAULT_BODY)
                    return
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    connection.putrequest(self.command, self.path, skip_host=True,
                                          skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP and name.lower() != "expect":
                            connection.putheader(name, value)
                    connection.endheaders(body or None)
                    answer = connection.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    if self.command == "HEAD":
                        length_header = answer.getheader("Content-Length")
                        if length_header is not None:
                            self.send_header("Content-Length", length_header)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, *args):
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def count(self, method: str, key: str, **match) -> int:
        """Requests of this method on this key (and, if given, range / part_number)."""
        with self._lock:
            seen = list(self.seen)
        return sum(1 for s in seen if s.method == method and s.key == key
                   and all(getattr(s, name) == value for name, value in match.items()))

    def fail_first(self, times: int, predicate: Callable[[Seen], bool]) -> None:
        """Fail the first `times` requests the predicate picks, then forward them again."""
        failures: Counter = Counter()

        def rule(seen: Seen) -> bool:
            if predicate(seen) and failures["n"] < times:
                failures["n"] += 1
                return True
            return False

        self.fail = rule

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
