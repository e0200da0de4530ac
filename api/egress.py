"""Outbound HTTP to user-supplied URLs (status webhooks), without server-side request forgery.

A user picks the URL, so the API must never be turned into a way to reach what only the API
can reach. The name is resolved here, every address is checked, and the connection goes to
the checked address itself (Host header and TLS SNI/certificate name still the URL's name),
so a DNS answer that changes between the check and the connect cannot slip past the check.
Redirects are not followed.

Always refused: link-local addresses and the cloud metadata services (169.254.0.0/16,
fe80::/10, AWS's fd00:ec2::254, Alibaba's 100.100.100.200, Azure's 168.63.129.16), in any IPv6
spelling that embeds an IPv4 address, and the metadata services' host names.
With `deny_private`: everything that is not globally routable (loopback, RFC 1918, CGNAT, ULA…).
"""

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 1024

ALWAYS_DENIED = tuple(ipaddress.ip_network(net) for net in (
    "169.254.0.0/16",     # IPv4 link-local: AWS/GCP/Azure/Salad instance metadata
    "fe80::/10",          # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata (inside the CGNAT range)
    "168.63.129.16/32",   # Azure's wire server (a public address, reachable from every VM)
))
# Names that only ever mean a metadata service; refused before they are resolved, so a resolver
# that maps them somewhere unexpected cannot matter.
DENIED_HOST_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com",
})
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class Refused(Exception):
    """The destination is not allowed; nothing was sent (no connection was opened)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # at most MAX_RESPONSE_BYTES


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_address(address: str, *, deny_private: bool = False) -> None:
    """Raise Refused unless `address` (an IP literal) may be connected to."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        raise Refused(f"{address!r} is not an IP address") from None
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    for candidate in (ip, embedded):
        if candidate is not None and (candidate.is_link_local or any(
                candidate in net for net in ALWAYS_DENIED if net.version == candidate.version)):
            raise Refused(f"{address} is a link-local or cloud metadata address")
    # The IPv4 address is what an embedding form reaches, so it is the one judged below.
    effective = embedded or ip
    if effective.is_multicast or effective.is_unspecified:
        raise Refused(f"{address} is not a unicast address")
    if deny_private and not effective.is_global:
        raise Refused(f"{address} is a loopback, private or reserved address "
                      "(KELPIE_WEBHOOK_DENY_PRIVATE is on)")


def resolve(host: str, port: int, *, deny_private: bool = False) -> list[str]:
    """The addresses of `host` that may be connected to, in resolver order.

    Addresses that are refused are dropped; if none is left, Refused says why.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve {host}: {error.strerror}") from None
    allowed, reasons = [], []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = sockaddr[0]
        try:
            check_address(address, deny_private=deny_private)
        except Refused as refusal:
            reasons.append(str(refusal))
            continue
        if address not in allowed:
            allowed.append(address)
    if not allowed:
        raise Refused(f"{host}: " + ("; ".join(dict.fromkeys(reasons)) or "no address"))
    return allowed


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed IP that still sends SNI for, and verifies the certificate of, the
    URL's host name."""

    def __init__(self, address: str, port: int, server_name: str, timeout: float,
                 context: ssl.SSLContext):
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def _host_header(host: str, port: int, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


def check_url(url: str, *, deny_private: bool = False, allowed_hosts=()):
    """The checks that need no DNS: scheme, host, allow list, port, and the address itself when
    the host is an IP literal. Run when a job is submitted (a refused webhook is a 400 then)
    and again before each delivery. Returns (parts, host, port); raises Refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"scheme {parts.scheme!r} is not http or https")
    host = parts.hostname
    if not host:
        raise Refused("the URL has no host")
    if host.lower().rstrip(".") in DENIED_HOST_NAMES:
        raise Refused(f"{host} is a cloud metadata service")
    if allowed_hosts and host.lower() not in allowed_hosts:
        raise Refused(f"{host} is not in KELPIE_WEBHOOK_ALLOWED_HOSTS")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("the URL's port is not valid") from None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass  # a name: its addresses are checked when it is resolved, at each delivery
    else:
        check_address(host, deny_private=deny_private)
    return parts, host, port


class Cutoff:
    """Ends one blocking exchange at its total deadline, or sooner when `fire()` is called (the
    server is shutting down): it shuts the socket down, so a read or write in progress returns
    at once. A socket timeout alone bounds each read, and a receiver that trickles a byte at a
    time would stretch the exchange without end."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.fired = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shut()

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float = 10.0,
         deny_private: bool = False, allowed_hosts=(),
         ssl_context: ssl.SSLContext | None = None, cutoff: Cutoff | None = None) -> Response:
    """POST `body` to `url` and return the status and the first KiB of the answer.

    `allowed_hosts`, when not empty, is the only host names the URL may name (checked before
    the name is even resolved).

    `timeout` is the total for the whole exchange, however the receiver paces its bytes;
    `cutoff` lets the caller end it sooner.

    Raises Refused (destination not allowed: nothing was sent) or OSError / http.client
    errors (network trouble: worth retrying). Blocking: call it from a thread.
    """
    cutoff = cutoff or Cutoff()
    timer = threading.Timer(timeout, cutoff.fire)
    timer.daemon = True
    timer.start()
    try:
        response = _post(url, body, headers, timeout, deny_private, allowed_hosts, ssl_context,
                         cutoff)
    except (OSError, http.client.HTTPException):
        if cutoff.fired:
            raise TimeoutError(f"no complete answer within {timeout:g} s") from None
        raise
    finally:
        timer.cancel()
    # A socket shut mid-answer can read as a short but well-formed one (headers cut at EOF):
    # once the cutoff fired, nothing that was read counts.
    if cutoff.fired:
        raise TimeoutError(f"no complete answer within {timeout:g} s")
    return response


def _post(url, body, headers, timeout, deny_private, allowed_hosts, ssl_context,
          cutoff: Cutoff) -> Response:
    parts, host, port = check_url(url, deny_private=deny_private, allowed_hosts=allowed_hosts)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    default_port = 443 if parts.scheme == "https" else 80
    request_headers = {**headers, "Host": _host_header(host, port, default_port),
                       "Content-Length": str(len(body)), "Connection": "close"}
    addresses = resolve(host, port, deny_private=deny_private)
    # One deadline for the whole exchange, so a slow trickle cannot stretch it.
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or cutoff.fired:
            break
        if parts.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            connection = _PinnedHTTPSConnection(address, port, host, remaining, context)
        else:
            connection = http.client.HTTPConnection(address, port, timeout=remaining)
        try:
            try:
                connection.connect()
            except OSError as error:  # try the name's next address
                last_error = error
                continue
            # Kept: with "Connection: close" the response takes the socket over from the
            # connection, and the read below still has to keep to the deadline.
            sock = connection.sock
            cutoff.watch(sock)
            sock.settimeout(_remaining(deadline))
            connection.request("POST", target, body=body, headers=request_headers)
            response = connection.getresponse()
            sock.settimeout(_remaining(deadline))
            # Only the start is kept: a huge or endless answer costs nothing.
            start = response.read(MAX_RESPONSE_BYTES)
            response.close()
            return Response(response.status, start)
        finally:
            connection.close()
    raise last_error or TimeoutError(f"no answer from {host} within {timeout:g} s")


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining
