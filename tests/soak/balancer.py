"""An HTTP balancer on loopback in front of several API processes, for the chaos soak.

It gives agents and clients one stable URL while API processes are SIGKILLed and restarted
behind it (a refused connection is retried on the next backend, as a load balancer's health
check would route around a dead replica), and it records every worker-protocol exchange it
forwards: that is where the soak measures heartbeat latency and spacing, recovery after each
fault, and 5xx answers, without asking the agent to log anything extra.

It runs as its own process (`python -m tests.soak.balancer`), so the test's threads (webhook
receivers, the noisy tenant) never hold it up and distort what it measures; every exchange is
one JSON line in the record file, timed with CLOCK_MONOTONIC, which all processes share.
"""

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Exchange:
    method: str
    path: str
    status: int  # 502 when no backend answered (the balancer's own answer)
    started: float  # time.monotonic() when the request arrived
    seconds: float  # until the backend's answer was read
    backend: int | None
    machine_id: str | None
    job_id: str | None
    claimed: bool  # GET /work that handed out a job


class Balancer:
    def __init__(self, backends: list[str], record_path: str, port: int = 0,
                 timeout: float = 120.0):
        # "http://127.0.0.1:port" each, fixed: a restarted API comes back on the same port.
        self.backends = [url.removeprefix("http://") for url in backends]
        self.timeout = timeout
        self._next = itertools.count()
        self.lock = threading.Lock()
        self.record = open(record_path, "a", buffering=1)  # noqa: SIM115 - lives as long
        # Backends taken out of rotation until their health check answers again, as any load
        # balancer does: a restarted API accepts connections several seconds before its worker
        # is ready, and requests sent to it meanwhile just wait.
        self.down: set[int] = set()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the soak prints its own summary
                pass

            def _forward(self):
                balancer.forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {name: value for name, value in handler.headers.items()
                   if name.lower() not in HOP_BY_HOP}
        first = next(self._next)
        status, answer, answer_headers, used = 502, b'{"error":"bad_gateway"}', {}, None
        order = [(first + offset) % len(self.backends) for offset in range(len(self.backends))]
        with self.lock:
            order = [index for index in order if index not in self.down] or order
        for index in order:
            connection = http.client.HTTPConnection(self.backends[index], timeout=self.timeout)
            try:
                try:
                    connection.request(handler.command, handler.path, body=body,
                                       headers=headers)
                except ConnectionRefusedError:
                    self._take_out(index)
                    continue  # nothing sent: safe to try the next backend
                response = connection.getresponse()
                status, answer, used = response.status, response.read(), index
                answer_headers = {name: value for name, value in response.getheaders()
                                  if name.lower() not in HOP_BY_HOP}
                break
            except (OSError, http.client.HTTPException):
                # Sent, then the backend died: the request may have taken effect, so it is not
                # replayed here; the client sees a 502 and retries as it would behind any proxy.
                status, used = 502, index
                self._take_out(index)
                break
            finally:
                connection.close()
        self._record(handler, body, status, answer, started, used)
        try:
            handler.send_response(status)
            for name, value in answer_headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(answer)
        except OSError:
            handler.close_connection = True

    def _take_out(self, index: int) -> None:
        with self.lock:
            if index in self.down:
                return
            self.down.add(index)
        threading.Thread(target=self._probe, args=(index,), daemon=True).start()

    def _probe(self, index: int) -> None:
        """Health-check a backend taken out until /healthz answers promptly, then put it back."""
        while True:
            time.sleep(0.25)
            connection = http.client.HTTPConnection(self.backends[index], timeout=1)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status < 500:
                    break
            except (OSError, http.client.HTTPException):
                pass
            finally:
                connection.close()
        with self.lock:
            self.down.discard(index)

    def _record(self, handler, body, status, answer, started, backend) -> None:
        path = handler.path.split("?", 1)[0]
        if not (path == "/work" or path.endswith(("/heartbeat", "/completed", "/failed"))):
            return
        machine_id = job_id = None
        claimed = False
        if path == "/work":
            query = handler.path.partition("?")[2]
            for part in query.split("&"):
                name, _, value = part.partition("=")
                if name == "machine_id":
                    machine_id = value
            if status == 200:
                try:
                    jobs = json.loads(answer)
                    if jobs:
                        claimed, job_id = True, jobs[0]["id"]
                except (ValueError, KeyError, TypeError, IndexError):
                    pass
        else:
            job_id = path.split("/")[2]
            try:
                machine_id = json.loads(body or b"{}").get("machine_id")
            except ValueError:
                pass
        exchange = Exchange(handler.command, path, status, started, time.monotonic() - started,
                            backend, machine_id, job_id, claimed)
        with self.lock:
            self.record.write(json.dumps(asdict(exchange)) + "\n")


def read_record(path) -> list[Exchange]:
    exchanges = []
    try:
        with open(path) as record:
            for line in record:
                try:
                    exchanges.append(Exchange(**json.loads(line)))
                except (ValueError, TypeError):
                    pass  # a line cut short by a kill
    except OSError:
        pass
    return exchanges


def main() -> int:
    parser = argparse.ArgumentParser(description="soak balancer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("backends", nargs="+")
    args = parser.parse_args()
    balancer = Balancer(args.backends, args.record, args.port)
    print(f"balancing on {balancer.url}", file=sys.stderr, flush=True)
    balancer.server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
