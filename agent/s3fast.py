"""A lean S3 client for the many-small-objects case: one signed GET or PUT on urllib3.

botocore spends about a millisecond of CPU on each request (events, validation, parsing); with
hundreds of small files and the GIL that, not the network, sets the pace. For objects below the
multipart threshold on a custom (path-style) endpoint, this signs the request itself (AWS
Signature Version 4, the same credentials botocore resolves) and sends it directly, at about a
third of the CPU. GETs (the ranged GETs of large objects too), small PUTs and listing pages
go through here; anything else (AWS's own endpoints, multipart uploads, HEAD, DELETE, commit
markers) stays on botocore. On a plain-http endpoint a GET skips urllib3 too (LeanResponse).
"""

import collections
import hashlib
import hmac
import socket
import struct
import time
import xml.etree.ElementTree as ElementTree
from urllib.parse import quote, unquote_plus, urlparse

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3RequestError(Exception):
    def __init__(self, method: str, key: str, status: int, body: bytes):
        self.status = status
        super().__init__(f"{method} {key}: HTTP {status} {body[:200]!r}")


# --- a lean HTTP/1.1 GET for plain-http endpoints ---
#
# urllib3 answers each GET through http.client: an email.parser pass over the headers, a
# buffered socket file, a header dict built twice, poll() before every socket call (Python's
# way of enforcing a socket timeout). On hundreds of small objects that machinery cost more CPU
# than the exchange's system calls. Here a GET is one sendall, a recv for the head and a
# recv_into for the body on a blocking socket whose timeouts the kernel enforces
# (SO_RCVTIMEO/SO_SNDTIMEO), with the head split by hand. Failures raise urllib3's exceptions,
# so agent.blame judges them as it judges urllib3's (storage unreachable).

RECV_SIZE = 16384  # the first read of an answer: its head and, for a small body, much of it
MAX_HEAD = 65536  # bytes of status line and headers (or of a chunk-size line) at most


class _Headers(dict):
    """Response headers under lower-cased names; get() takes any case, as urllib3's does."""

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


class _ClosedEarly(ProtocolError):
    """The store closed the connection before its answer was complete."""


# How a connection the store closed while it sat idle in the pool fails on its next request.
_STALE = (_ClosedEarly, ConnectionResetError, BrokenPipeError)


class _Wire:
    """One keep-alive connection: its socket and the bytes received but not yet consumed."""

    __slots__ = ("sock", "pending", "reused")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = b""
        self.reused = False

    def _receive(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise _ClosedEarly("connection closed by the store before the answer was complete")
        self.pending += data

    def read_until(self, marker: bytes) -> bytes:
        """The bytes before `marker` (consumed with it)."""
        while (end := self.pending.find(marker)) < 0:
            if len(self.pending) > MAX_HEAD:
                raise ProtocolError("response head or chunk line too long")
            self._receive()
        line, self.pending = self.pending[:end], self.pending[end + len(marker):]
        return line

    def read_exact(self, size: int) -> bytearray:
        """Exactly `size` bytes, straight into their buffer (no copy for what the first read
        did not already bring); fewer, because the store closed, is an error."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = min(size, len(self.pending))
        if filled:
            view[:filled] = self.pending[:filled]
            self.pending = self.pending[filled:]
        while filled < size:
            got = self.sock.recv_into(view[filled:])
            if not got:
                raise ProtocolError(f"IncompleteRead: the store closed after {filled} of "
                                    f"{size} bytes")
            filled += got
        return buffer

    def read_some(self, size: int) -> bytes:
        """Up to `size` bytes, b"" once the store has closed (bodies without a length)."""
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()


def _wire_error(error: OSError) -> HTTPError:
    """A socket failure as urllib3 would have raised it (agent.blame: storage unreachable)."""
    if isinstance(error, (BlockingIOError, TimeoutError)):  # SO_RCVTIMEO/SO_SNDTIMEO ran out
        return Urllib3TimeoutError(f"the store did not answer in time ({error})")
    return ProtocolError(f"connection to the store failed: {error!r}")


class LeanResponse:
    """The answer to one lean GET: status, headers, and a body read on demand with read(),
    which returns b"" once the body is complete. release_conn() puts the connection back for
    the next request if the body was read to its end, else closes it."""

    def __init__(self, owner: "FastS3", wire: _Wire, status: int, headers: _Headers,
                 length: int | None, chunked: bool, keep_alive: bool):
        self.status = status
        self.headers = headers
        self._owner = owner
        self._wire: _Wire | None = wire
        self._left = length  # of the body, or of the current chunk; None: until the close
        self._chunked = chunked
        self._chunk_started = False  # a chunk's data has been read: a CRLF is due before the next
        self._keep_alive = keep_alive
        self._done = length == 0 and not chunked

    def read(self, amt: int | None = None) -> bytes | bytearray:
        if self._done:
            return b""
        if self._wire is None:
            raise ProtocolError("read after release_conn()")
        try:
            if self._chunked:
                return self._read_chunked(amt)
            if self._left is None:
                return self._read_to_close(amt)
            size = self._left if amt is None else min(amt, self._left)
            data = self._wire.read_exact(size)
            self._left -= size
            self._done = self._left == 0
            return data
        except HTTPError:
            self._abandon()
            raise
        except OSError as error:
            self._abandon()
            raise _wire_error(error) from error

    def _abandon(self) -> None:
        self._wire.close()
        self._wire = None

    def _read_chunked(self, amt: int | None) -> bytes:
        parts = []
        want = amt
        while want is None or want > 0:
            if self._left == 0:
                if self._chunk_started and self._wire.read_until(b"\r\n"):
                    raise ProtocolError("chunk data longer than its size")
                size_text = self._wire.read_until(b"\r\n").split(b";", 1)[0].strip()
                try:
                    self._left = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                self._chunk_started = True
                if self._left == 0:
                    while self._wire.read_until(b"\r\n"):
                        pass  # trailer fields, up to the empty line that ends the body
                    self._done = True
                    break
            size = self._left if want is None else min(want, self._left)
            parts.append(self._wire.read_exact(size))
            self._left -= size
            if want is not None:
                want -= size
        return b"".join(parts)

    def _read_to_close(self, amt: int | None) -> bytes:
        parts = []
        while data := self._wire.read_some(RECV_SIZE if amt is None else amt):
            parts.append(data)
            if amt is not None:
                break
        else:
            self._done = True
        return b"".join(parts)

    def release_conn(self) -> None:
        wire, self._wire = self._wire, None
        if wire is None:
            return
        if self._done and self._keep_alive and not wire.pending:
            self._owner._idle(wire)
        else:
            wire.close()  # unread bytes or no keep-alive: never reused


class FastS3:
    def __init__(self, endpoint_url: str, region: str, credentials, *, pool_size: int,
                 ca_bundle: str | None = None, timeout: float = 60.0):
        parsed = urlparse(endpoint_url)
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        self.base_path = parsed.path.rstrip("/")
        self.host = parsed.netloc
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable or not)
        kwargs = {"ca_certs": ca_bundle} if ca_bundle else {}
        self.http = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, retries=False, block=False,
            timeout=urllib3.Timeout(connect=10, read=timeout), **kwargs)
        # Every request goes to this one origin: its pool, looked up once, spares each
        # request the manager's URL parsing and pool lookup.
        self.pool = self.http.connection_from_url(self.origin)
        self._key_cache: tuple[str, str, bytes] | None = None
        self._date_cache: tuple[int, str] = (-1, "")
        # GETs of a plain-http endpoint take the lean path (LeanResponse); TLS stays on urllib3.
        self.lean_get = parsed.scheme == "http"
        self._address = (parsed.hostname, parsed.port or 80)
        self._max_idle = pool_size
        self._timeout = timeout
        self._idle_wires: collections.deque[_Wire] = collections.deque()

    # --- Signature Version 4 ---

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key_cache
        if cached and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key_cache = (secret, day, key)
        return key

    def _amz_date(self) -> str:
        """The current second as SigV4 writes it, formatted once per second, not per request."""
        second = int(time.time())
        cached = self._date_cache
        if cached[0] != second:
            cached = self._date_cache = (second, time.strftime("%Y%m%dT%H%M%SZ",
                                                               time.gmtime(second)))
        return cached[1]

    def _signed(self, method: str, bucket: str, key: str, payload_sha256: str,
                extra_headers: dict | None = None,
                query: dict[str, str] | None = None) -> tuple[str, dict]:
        creds = self.credentials.get_frozen_credentials()
        amz_date = self._amz_date()
        day = amz_date[:8]
        path = f"{self.base_path}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        query_string = "&".join(
            f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
            for name, value in sorted((query or {}).items()))
        signed = {"host": self.host, "x-amz-content-sha256": payload_sha256,
                  "x-amz-date": amz_date}
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical = "\n".join([
            method, path, query_string,
            *(f"{name}:{signed[name]}" for name in names), "",
            ";".join(names), payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.digest(self._signing_key(creds.secret_key, day), to_sign.encode(),
                                "sha256").hex()  # digest(): OpenSSL's one-shot HMAC, no object
        headers = {name: value for name, value in signed.items() if name != "host"}
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
        headers.update(extra_headers or {})
        return path + (f"?{query_string}" if query_string else ""), headers

    # --- requests ---

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None,
            if_match: str | None = None):
        """Streaming GET, of the whole object or of bytes [first, last], optionally only if
        the object still has ETag `if_match` (else S3RequestError with status 412); returns
        the response, a LeanResponse or on TLS urllib3's, both with status, headers.get(),
        read([amt]) and release_conn() (content NOT decoded: a gzip-encoded object comes back
        as its gzip bytes). The caller reads it and calls release_conn()."""
        extra = {}
        if byte_range:
            extra["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        if if_match:
            extra["If-Match"] = if_match
        url, headers = self._signed("GET", bucket, key, EMPTY_SHA256, extra)
        if self.lean_get:
            response = self._lean_get(url, headers)
        else:
            response = self.pool.urlopen("GET", url, headers=headers, preload_content=False,
                                         decode_content=False, retries=False, redirect=False)
        if response.status not in (200, 206):
            body = bytes(response.read())
            response.release_conn()
            raise S3RequestError("GET", key, response.status, body)
        return response

    def _lean_get(self, target: str, headers: dict) -> LeanResponse:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host}", "Accept-Encoding: identity",
                 "User-Agent: kelpie-agent"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"invalid value for header {name}: {value!r}")
            lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        while True:
            wire = self._checkout()
            try:
                wire.sock.sendall(request)
                head = wire.read_until(b"\r\n\r\n")
                return self._answer(wire, head)
            except (OSError, HTTPError) as error:
                wire.close()
                # A pooled connection the store closed while it was idle fails before any
                # byte of the answer: the GET (idempotent) is sent again on a new connection.
                # Anything else, or on a new connection, is the store's answer to this GET.
                if wire.reused and not wire.pending and isinstance(error, _STALE):
                    continue
                if isinstance(error, HTTPError):
                    raise
                raise _wire_error(error) from error

    def _answer(self, wire: _Wire, head: bytes) -> LeanResponse:
        while True:
            lines = head.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not (version.startswith("HTTP/1.") and code.isascii() and code.isdigit()):
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
            status = int(code)
            if not 100 <= status < 200:
                break
            head = wire.read_until(b"\r\n\r\n")  # an interim answer (100 Continue): skipped
        headers = _Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name[0] in " \t" or name[-1] in " \t":
                raise ProtocolError(f"malformed header line {line[:100]!r}")
            name, value = name.lower(), value.strip(" \t")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        keep_alive = (version == "HTTP/1.1"
                      and "close" not in headers.get("connection", "").lower())
        chunked = False
        transfer_encoding = headers.get("transfer-encoding")
        content_length = headers.get("content-length")
        if transfer_encoding is not None:
            if transfer_encoding.lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {transfer_encoding!r}")
            chunked, length = True, 0
        elif content_length is not None:
            if not (content_length.isascii() and content_length.isdigit()):
                raise ProtocolError(f"bad Content-Length {content_length[:40]!r}")
            length = int(content_length)
        elif status in (204, 304):
            length = 0
        else:
            length, keep_alive = None, False  # the body ends when the store closes
        return LeanResponse(self, wire, status, headers, length, chunked, keep_alive)

    def _checkout(self) -> _Wire:
        """An idle connection to the endpoint, else a new one (a deque: no lock needed)."""
        try:
            return self._idle_wires.pop()
        except IndexError:
            pass
        try:
            sock = socket.create_connection(self._address, timeout=10)
        except OSError as error:
            raise NewConnectionError(self.origin, f"failed to connect: {error!r}") from error
        # Blocking, with the kernel enforcing the read and write timeouts: a socket with a
        # Python timeout polls before every recv and send.
        sock.settimeout(None)
        interval = struct.pack("ll", int(self._timeout), int(self._timeout % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Wire(sock)

    def _idle(self, wire: _Wire) -> None:
        if len(self._idle_wires) < self._max_idle:
            wire.reused = True
            self._idle_wires.append(wire)
        else:
            wire.close()

    def put(self, bucket: str, key: str, data: bytes, content_encoding: str | None = None):
        extra = {"Content-Length": str(len(data))}
        if content_encoding:
            extra["Content-Encoding"] = content_encoding
        url, headers = self._signed("PUT", bucket, key, hashlib.sha256(data).hexdigest(), extra)
        response = self.pool.urlopen("PUT", url, body=data, headers=headers, retries=False,
                                     redirect=False)
        if response.status != 200:
            raise S3RequestError("PUT", key, response.status, response.data)

    def list_page(self, bucket: str, prefix: str, max_keys: int,
                  token: str | None = None) -> tuple[list[dict], str | None]:
        """One ListObjectsV2 page: ([{"Key", "Size", "ETag"}], the next page's token or None).
        Parsed with ElementTree and without botocore's model: botocore spent most of a
        500-key listing's CPU parsing every LastModified date, which no caller reads. Keys
        are asked URL-encoded (any byte survives XML) and decoded as botocore does."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys),
                 "encoding-type": "url"}
        if token:
            query["continuation-token"] = token
        url, headers = self._signed("GET", bucket, "", EMPTY_SHA256, query=query)
        response = self.pool.urlopen("GET", url, headers=headers, retries=False, redirect=False)
        if response.status != 200:
            raise S3RequestError("LIST", f"{bucket}/{prefix}", response.status, response.data)
        root = ElementTree.fromstring(response.data)
        encoded = root.findtext(f"{S3_NS}EncodingType") == "url"
        objects = []
        for item in root.iter(f"{S3_NS}Contents"):
            key = item.findtext(f"{S3_NS}Key") or ""
            objects.append({"Key": unquote_plus(key) if encoded else key,
                            "Size": int(item.findtext(f"{S3_NS}Size") or 0),
                            "ETag": item.findtext(f"{S3_NS}ETag")})
        truncated = root.findtext(f"{S3_NS}IsTruncated") == "true"
        next_token = root.findtext(f"{S3_NS}NextContinuationToken")
        return objects, (next_token if truncated and next_token else None)
