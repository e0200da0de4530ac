"""The HTTP plumbing every loopback stand-in shares (Salad's IMDS, identity services and public
API, the webhook receiver): a threaded server on 127.0.0.1 that hands each request to the
stand-in's `respond()` and writes back what it returns. A stand-in holds only its behaviour.
"""

import json
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    raw: bytes

    @property
    def json(self):
        """The body as JSON; None when empty or not JSON."""
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port right after stop()


class LoopbackServer:
    """Subclasses implement `respond(request) -> (status, payload[, headers])`: a payload of
    bytes is sent as it is, None as an empty body, anything else as JSON."""

    def __init__(self, port: int = 0):
        self.port = port  # 0: picked at the first start, then kept across stop()/start()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, request: Request):
        raise NotImplementedError

    def start(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload, *extra = stand_in.respond(
                    Request(self.command, self.path, self.headers, raw))
                headers = dict(extra[0]) if extra else {}
                if payload is None:
                    data = b""
                elif isinstance(payload, bytes):
                    data = payload
                else:
                    data = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name=type(self).__name__).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until start() again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
