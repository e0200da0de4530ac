"""Status webhooks and job history, against the real API process (SQLite and PostgreSQL) and a
real receiver on loopback; the address checks and the pinned connection also in-process."""

import hmac
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from api import egress, webhooks
from api.config import Settings
from tests.support.api_process import ApiProcess
from tests.support.net import wait_until
from tests.support.webhook_receiver import WebhookReceiver

# Fast retries so that a test sees several tries in well under a second.
FAST = {
    "KELPIE_WEBHOOK_POLL_S": "0.05",
    "KELPIE_WEBHOOK_RETRY_BASE_S": "0.1",
    "KELPIE_WEBHOOK_RETRY_MAX_S": "0.4",
    "KELPIE_WEBHOOK_TIMEOUT_S": "3",
    # This module tests the address checks themselves, so no host allowlist in front of them.
    "KELPIE_WEBHOOK_ALLOWED_HOSTS": "",
    # A lost lease is seen by a plain poll only once the empty cache lapses: soon, here.
    "KELPIE_EMPTY_CACHE_TTL_S": "1",
}


@pytest.fixture(scope="module")
def api(database_url, api_server):
    """This module's API: the shared fixture's, with fast webhook retries."""
    return api_server(database_url, env=FAST)


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


def submit(api, key, webhook, **fields) -> str:
    job = {"command": "true", "sync": {"before": [], "during": [], "after": []},
           "webhook": webhook, **fields}
    status, body = api.request("POST", "/jobs", job, key)
    assert status == 202, body
    return body["id"]


def claim(api, key, machine_id, container_group_id=None):
    path = f"/work?machine_id={machine_id}"
    if container_group_id:
        path += f"&container_group_id={container_group_id}"
    status, body = api.request("GET", path, None, key)
    assert status == 200, body
    return body[0] if body else None


def report(api, key, job_id, outcome, machine_id, **extra):
    status, body = api.request("POST", f"/jobs/{job_id}/{outcome}",
                               {"machine_id": machine_id, **extra}, key)
    assert status in (200, 202), body


def deliveries(api, key, job_id) -> list[dict]:
    status, body = api.request("GET", f"/jobs/{job_id}/webhooks", None, key)
    assert status == 200, body
    return body["deliveries"]


def wait_deliveries(api, key, job_id, predicate, timeout=30.0, message="") -> list[dict]:
    def check():
        found = deliveries(api, key, job_id)
        return found if predicate(found) else None
    return wait_until(check, timeout=timeout, interval=0.05, message=message or
                      f"deliveries of {job_id} never matched: {deliveries(api, key, job_id)}")


def all_settled(found):
    return found and all(item["status"] != "pending" for item in found)


def summary(received) -> list[tuple]:
    return [(item.json["status"], item.json["machine_id"], item.json["attempt"])
            for item in received]


def secret_of(api, key) -> str:
    status, body = api.request("GET", "/users/me/webhook-secret", None, key)
    assert status == 200, body
    return body["secret"]


# --- Delivery end to end ----------------------------------------------------------------------

def test_job_that_fails_once_then_completes(api, user_key, receiver):
    # The receiver errors twice: the first notification is retried, and the later two must
    # wait for it (per-job order), not overtake it.
    receiver.script = [500, 503]
    job_id = submit(api, user_key, receiver.url, max_failures=3)
    assert claim(api, user_key, "machine-a")["id"] == job_id
    report(api, user_key, job_id, "failed", "machine-a", exit_code=3, reason="boom")
    assert claim(api, user_key, "machine-b")["id"] == job_id
    report(api, user_key, job_id, "completed", "machine-b")

    found = wait_deliveries(api, user_key, job_id,
                            lambda found: len(found) == 3 and all_settled(found))
    accepted = receiver.accepted(job_id)
    assert summary(accepted) == [("running", "machine-a", 1), ("running", "machine-b", 2),
                                 ("completed", "machine-b", 2)]
    # Everything that arrived, in arrival order: the two refused tries of the first, then the rest.
    assert [item.delivery for item in receiver.for_job(job_id)] == [
        accepted[0].delivery] * 3 + [accepted[1].delivery, accepted[2].delivery]
    assert [item.answered for item in receiver.for_job(job_id)] == [500, 503, 200, 200, 200]

    body = accepted[0].json
    assert set(body) == {"status", "job_id", "machine_id", "container_group_id", "attempt",
                         "timestamp", "num_failures", "num_interruptions", "reason"}
    assert body["job_id"] == job_id and body["container_group_id"] is None
    assert body["timestamp"].endswith("Z")
    assert accepted[0].headers["content-type"] == "application/json"

    assert [item["status"] for item in found] == ["delivered"] * 3
    assert [item["job_status"] for item in found] == ["running", "running", "completed"]
    first = found[0]
    assert first["attempts"] == 3 and first["last_response_code"] == 200
    assert first["last_error"] is None and first["next_retry"] is None
    assert first["delivered"] and first["url"] == receiver.url and first["body"] == body
    assert [item["attempts"] for item in found[1:]] == [1, 1]

    # The history of the same job: every transition, in order, with machine and attempt.
    status, history = api.request("GET", f"/jobs/{job_id}/events", None, user_key)
    assert status == 200
    events = [(e["kind"], e["status"], e["machine_id"], e["attempt"], e["exit_code"])
              for e in history["events"]]
    assert events == [
        ("created", "pending", None, None, None),
        ("assigned", "running", "machine-a", 1, None),
        ("attempt_failed", "running", "machine-a", 1, 3),
        ("requeued", "pending", None, None, None),
        ("assigned", "running", "machine-b", 2, None),
        ("completed", "completed", "machine-b", 2, 0),  # a completion is an exit 0
    ]
    assert history["events"][2]["reason"] == "boom"
    assert all(e["at"].endswith("Z") for e in history["events"])


def test_failed_for_good_canceled_and_purged_are_notified(api, user_key, receiver):
    failing = submit(api, user_key, receiver.url, max_failures=1)
    claim(api, user_key, "machine-f")
    report(api, user_key, failing, "failed", "machine-f", exit_code=1)

    running = submit(api, user_key, receiver.url)
    claim(api, user_key, "machine-c")
    assert api.request("DELETE", f"/jobs/{running}", None, user_key)[0] == 202

    pending = submit(api, user_key, receiver.url)
    assert api.request("DELETE", f"/jobs/{pending}", None, user_key)[0] == 202

    group = "group-" + secrets.token_hex(4)
    purged = submit(api, user_key, receiver.url, container_group_id=group)
    claim(api, user_key, "machine-p", group)
    assert api.request("DELETE", f"/jobs/container-groups/{group}", None, user_key)[0] == 200

    receiver.wait_for(failing, 2)
    receiver.wait_for(running, 2)
    receiver.wait_for(pending, 1)
    receiver.wait_for(purged, 2)
    assert summary(receiver.for_job(failing)) == [("running", "machine-f", 1),
                                                  ("failed", "machine-f", 1)]
    assert summary(receiver.for_job(running)) == [("running", "machine-c", 1),
                                                  ("canceled", "machine-c", 1)]
    assert summary(receiver.for_job(pending)) == [("canceled", None, 0)]
    assert summary(receiver.for_job(purged)) == [("running", "machine-p", 1),
                                                 ("canceled", "machine-p", 1)]
    assert receiver.for_job(purged)[1].json["container_group_id"] == group
    status, history = api.request("GET", f"/jobs/{purged}/events", None, user_key)
    assert [e["kind"] for e in history["events"]] == ["created", "assigned", "purged"]


def test_heartbeat_lost_is_in_the_history_and_notified(api, user_key, receiver):
    job_id = submit(api, user_key, receiver.url, heartbeat_interval=1)
    claim(api, user_key, "machine-lost")
    # No heartbeats: after 2 × heartbeat_interval another machine gets the job.
    wait_until(lambda: claim(api, user_key, "machine-next"), timeout=15, interval=0.2)
    receiver.wait_for(job_id, 2)
    assert summary(receiver.for_job(job_id)) == [("running", "machine-lost", 1),
                                                 ("running", "machine-next", 2)]
    status, history = api.request("GET", f"/jobs/{job_id}/events", None, user_key)
    kinds = [(e["kind"], e["machine_id"], e["attempt"]) for e in history["events"]]
    assert kinds == [("created", None, None), ("assigned", "machine-lost", 1),
                     ("heartbeat_lost", "machine-lost", 1), ("assigned", "machine-next", 2)]
    assert "machine-next" in history["events"][2]["reason"]


def test_job_without_webhook_has_no_deliveries(api, user_key):
    job_id = submit(api, user_key, None)
    claim(api, user_key, "machine-quiet")
    report(api, user_key, job_id, "completed", "machine-quiet")
    assert deliveries(api, user_key, job_id) == []


def test_history_and_deliveries_belong_to_their_owner(api, user_key, receiver):
    job_id = submit(api, user_key, receiver.url)
    other = api.create_user("someone else")
    for path in (f"/jobs/{job_id}/webhooks", f"/jobs/{job_id}/events"):
        assert api.request("GET", path, None, other)[0] == 404
        assert api.request("GET", path, None, "kelpie_not-a-key")[0] == 403
    # Not a job id at all: refused like /jobs/<id> refuses it, with the usual error body.
    status, body = api.request("GET", "/jobs/no-such-job/webhooks", None, user_key)
    assert status == 404 and body["error"], body
    missing = "00000000-0000-4000-8000-000000000000"
    assert api.request("GET", f"/jobs/{missing}/webhooks", None, user_key)[0] == 404
    # The administrator sees every job's.
    assert api.request("GET", f"/jobs/{job_id}/webhooks", None, api.admin_key)[0] == 200


def test_receiver_down_then_up_is_delivered_once(api, user_key):
    receiver = WebhookReceiver()  # not started: connections are refused
    job_id = submit(api, user_key, receiver.url)
    claim(api, user_key, "machine-down")
    found = wait_deliveries(api, user_key, job_id,
                            lambda found: found and found[0]["attempts"] >= 3)
    pending = found[0]
    assert pending["status"] == "pending" and pending["last_response_code"] is None
    assert "Connection" in pending["last_error"] or "refused" in pending["last_error"].lower()
    assert pending["next_retry"] is not None
    with receiver:
        wait_deliveries(api, user_key, job_id, all_settled)
        assert [item["status"] for item in deliveries(api, user_key, job_id)] == ["delivered"]
        assert len(receiver.for_job(job_id)) == 1


def test_api_restarted_between_retries_still_delivers(api, user_key):
    receiver = WebhookReceiver()
    job_id = submit(api, user_key, receiver.url)
    claim(api, user_key, "machine-restart")
    wait_deliveries(api, user_key, job_id, lambda found: found and found[0]["attempts"] >= 2)
    api.stop()
    try:
        receiver.start()
        # Only the outbox in the database remembers the notification now.
        time.sleep(0.3)
        assert receiver.for_job(job_id) == []
    finally:
        api.start()
    try:
        receiver.wait_for(job_id, 1)
        found = wait_deliveries(api, user_key, job_id, all_settled)
        assert found[0]["status"] == "delivered" and found[0]["attempts"] >= 3
        assert summary(receiver.for_job(job_id)) == [("running", "machine-restart", 1)]
    finally:
        receiver.stop()


def test_signature_verifies_with_the_secret_only(api, user_key, receiver):
    secret = secret_of(api, user_key)
    assert secret.startswith("whsec_") and secret_of(api, user_key) == secret  # stable
    job_id = submit(api, user_key, receiver.url)
    claim(api, user_key, "machine-sig")
    [delivery] = receiver.wait_for(job_id, 1)
    header = delivery.signature
    at, mac = header.split(",")
    assert at.startswith("t=") and mac.startswith("v1=")
    assert abs(int(at[2:]) - time.time()) < 60
    # Computed by hand, as a receiver would.
    expected = hmac.new(secret.encode(), at[2:].encode() + b"." + delivery.raw, "sha256").hexdigest()
    assert hmac.compare_digest(mac[3:], expected)
    assert webhooks.verify(secret, delivery.raw, header)
    assert not webhooks.verify("whsec_" + secrets.token_urlsafe(32), delivery.raw, header)
    assert not webhooks.verify(secret, delivery.raw.replace(b"running", b"complete"), header)
    # Another user's secret is another secret.
    assert secret_of(api, api.create_user("second")) != secret

    # Rotation: later deliveries are signed with the new secret, not the old.
    status, rotated = api.request("POST", "/users/me/webhook-secret", None, user_key)
    assert status == 201 and rotated["secret"] != secret
    assert secret_of(api, user_key) == rotated["secret"]
    report(api, user_key, job_id, "completed", "machine-sig")
    [_, completed] = receiver.wait_for(job_id, 2)
    assert webhooks.verify(rotated["secret"], completed.raw, completed.signature)
    assert not webhooks.verify(secret, completed.raw, completed.signature)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
])
def test_metadata_address_webhook_is_refused_at_submission(api, user_key, url):
    # An IP literal the sender would refuse is a 400 naming the field, and no job is made.
    # (A name that resolves to such an address is refused at delivery: the egress tests below.)
    before = api.request("GET", "/jobs", key=user_key)[1]["_count"]
    job = {"command": "true", "sync": {"before": [], "during": [], "after": []}, "webhook": url}
    status, body = api.request("POST", "/jobs", job, user_key)
    assert status == 400, body
    assert body["field"] == "webhook" and "metadata" in body["message"]
    status, body = api.request("POST", "/jobs/batch", [job], user_key)
    assert status == 400 and body["field"] == "[0].webhook", body
    assert api.request("GET", "/jobs", key=user_key)[1]["_count"] == before


def test_webhook_secret_routes_need_credentials(api):
    anonymous = urllib.request.Request(api.url + "/users/me/webhook-secret")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(anonymous, timeout=10)
    assert answer.value.code == 401
    assert api.request("POST", "/users/me/webhook-secret", None, "kelpie_nope")[0] == 403


def test_openapi_documents_history_and_webhooks(api):
    status, document = api.request("GET", "/docs/openapi.json")
    assert status == 200
    paths = document["paths"]
    assert "get" in paths["/jobs/{job_id}/events"]
    assert "get" in paths["/jobs/{job_id}/webhooks"]
    assert {"get", "post"} <= set(paths["/users/me/webhook-secret"])
    schemas = document["components"]["schemas"]
    for name in ("WebhookBody", "WebhookDelivery", "WebhookDeliveryList", "WebhookSecret",
                 "JobEvent", "JobEventList"):
        assert name in schemas
    ok = paths["/jobs/{job_id}/webhooks"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/WebhookDeliveryList")


# --- Several senders, and giving up ----------------------------------------------------------

def test_two_api_processes_send_each_notification_once(api, database_url, user_key, receiver,
                                                        tmp_path):
    second = ApiProcess(database_url, env=FAST, log_path=tmp_path / "second.log")
    second.admin_key = api.admin_key  # the bootstrap admin key must agree across processes
    receiver.delay = 0.01
    jobs = [submit(api, user_key, receiver.url) for _ in range(30)]
    with second:
        claimed = []
        for index in range(len(jobs)):
            # Jobs created within one millisecond may be claimed in any order among themselves.
            server = (api, second)[index % 2]
            job_id = claim(server, user_key, f"machine-{index}")["id"]
            claimed.append(job_id)
            report(server, user_key, job_id, "completed", f"machine-{index}")
        assert sorted(claimed) == sorted(jobs)
        wait_until(lambda: all(len(receiver.for_job(job_id)) >= 2 for job_id in jobs),
                   timeout=60, message="not every notification arrived")
        time.sleep(0.5)  # any duplicate would arrive by now (leases and polls are fast)
    ids = [item.delivery for item in receiver.received]
    assert len(ids) == len(set(ids)) == 60
    for job_id in jobs:
        assert [item.json["status"] for item in receiver.for_job(job_id)] == ["running",
                                                                              "completed"]


def test_given_up_after_the_give_up_age_and_the_next_goes_out(database_url, tmp_path):
    server = ApiProcess(database_url, env={**FAST, "KELPIE_WEBHOOK_GIVE_UP_S": "1"},
                        log_path=tmp_path / "api.log")
    receiver = WebhookReceiver()
    with server:
        key = server.create_user("give-up")
        job_id = submit(server, key, receiver.url)
        claim(server, key, "machine-g")
        [found] = wait_deliveries(server, key, job_id, all_settled)
        assert found["status"] == "failed" and found["attempts"] >= 2
        created = datetime.fromisoformat(found["created"].replace("Z", "+00:00"))
        last = datetime.fromisoformat(found["last_attempt"].replace("Z", "+00:00"))
        assert last - created >= timedelta(seconds=1)
        # The given-up notification no longer holds back the job's next one.
        with receiver:
            report(server, key, job_id, "completed", "machine-g")
            [delivered] = receiver.wait_for(job_id, 1)
            assert delivered.json["status"] == "completed"


# --- In-process: the destination checks and the connection ----------------------------------

@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe",
    "fd00:ec2::254", "fe80::1", "fe80::1%eth0", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
    "::a9fe:a9fe", "0.0.0.0", "::", "224.0.0.1",
])
def test_always_refused_addresses(address):
    for deny_private in (False, True):
        with pytest.raises(egress.Refused):
            egress.check_address(address, deny_private=deny_private)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd00::1",
    "::ffff:10.0.0.1",
])
def test_private_addresses_refused_only_when_asked(address):
    egress.check_address(address)
    with pytest.raises(egress.Refused, match="DENY_PRIVATE"):
        egress.check_address(address, deny_private=True)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_allowed(address):
    egress.check_address(address, deny_private=True)


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket connects to from here on (the connect still happens)."""
    seen = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        seen.append(address[0])
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@pytest.fixture
def fake_dns(monkeypatch):
    """Resolve chosen names to chosen addresses (anything else as usual)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM,
                     6, "", (address, port)) for address in names[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "https://[fd00:ec2::254]/",
    "http://metadata.example.test/computeMetadata/v1/",
    "ftp://127.0.0.1/",
])
def test_refused_before_any_connection(url, connections, fake_dns):
    fake_dns["metadata.example.test"] = ["169.254.169.254", "fd00:ec2::254"]
    with pytest.raises(egress.Refused):
        egress.post(url, b"{}", {}, timeout=1)
    assert connections == []


def test_deny_private_refuses_a_name_that_resolves_to_loopback(receiver, connections, fake_dns):
    fake_dns["hooks.example.test"] = ["127.0.0.1"]
    with pytest.raises(egress.Refused, match="DENY_PRIVATE"):
        egress.post(f"http://hooks.example.test:{receiver.port}/hook", b"{}", {},
                    deny_private=True)
    assert connections == [] and receiver.received == []


def test_connects_to_the_checked_address_with_the_names_host_header(receiver, connections,
                                                                    fake_dns):
    # The name also resolves to the metadata address: only the allowed address is used.
    fake_dns["hooks.example.test"] = ["169.254.169.254", "127.0.0.1"]
    response = egress.post(f"http://hooks.example.test:{receiver.port}/hook?x=1",
                           b'{"a":1}', {"Content-Type": "application/json"}, timeout=5)
    assert response.status == 200 and response.body == b"ok"
    assert connections == ["127.0.0.1"]
    [request] = receiver.received
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert request.path == "/hook?x=1" and request.raw == b'{"a":1}'


def test_allowed_hosts_refuse_every_other_host_before_resolving(receiver, connections,
                                                                  fake_dns):
    fake_dns["hooks.example.test"] = ["127.0.0.1"]
    allowed = ("127.0.0.1", "localhost")
    with pytest.raises(egress.Refused, match="ALLOWED_HOSTS"):
        egress.post(f"http://hooks.example.test:{receiver.port}/", b"{}", {},
                    allowed_hosts=allowed)
    assert connections == [] and receiver.received == []
    assert egress.post(receiver.url, b"{}", {}, allowed_hosts=allowed).status == 200


def test_only_the_first_kib_of_the_answer_is_kept(receiver):
    receiver.response_body = b"x" * 50_000
    receiver.status = 500
    response = egress.post(receiver.url, b"{}", {}, timeout=5)
    assert response.status == 500 and response.body == b"x" * egress.MAX_RESPONSE_BYTES


def test_a_slow_endpoint_times_out(receiver):
    receiver.delay = 3
    started = time.monotonic()
    with pytest.raises(OSError):
        egress.post(receiver.url, b"{}", {}, timeout=0.5)
    assert time.monotonic() - started < 2


def test_https_to_the_checked_address_sends_sni_and_checks_the_certificate(tmp_path, fake_dns,
                                                                           connections):
    name = "hooks.example.test"
    cert_path, key_path = _self_signed(tmp_path, name)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    seen_sni = []
    server_context.sni_callback = lambda sock, server_name, context: seen_sni.append(server_name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        fake_dns[name] = ["127.0.0.1"]
        fake_dns["wrong.example.test"] = ["127.0.0.1"]
        client_context = ssl.create_default_context(cafile=str(cert_path))
        response = egress.post(f"https://{name}:{port}/hook", b"{}", {}, timeout=5,
                               ssl_context=client_context)
        assert response.status == 204
        assert seen_sni == [name] and connections == ["127.0.0.1"]
        # The certificate must match the URL's name, not merely the address connected to.
        with pytest.raises(ssl.SSLCertVerificationError):
            egress.post(f"https://wrong.example.test:{port}/hook", b"{}", {}, timeout=5,
                        ssl_context=client_context)
    finally:
        server.shutdown()
        server.server_close()


def _self_signed(directory, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- In-process: signing and backoff ----------------------------------------------------------

def test_sign_and_verify():
    body = b'{"status":"running"}'
    header = webhooks.sign("whsec_x", body, 1700000000)
    expected = hmac.new(b"whsec_x", b"1700000000." + body, "sha256").hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhooks.verify("whsec_x", body, header, now=1700000010)
    assert not webhooks.verify("whsec_y", body, header, now=1700000010)
    assert not webhooks.verify("whsec_x", body, header, now=1700001000)  # too old: replay
    assert not webhooks.verify("whsec_x", body, "garbage", now=1700000010)


def test_backoff_doubles_with_jitter_up_to_the_cap():
    settings = Settings(webhook_retry_base=5, webhook_retry_max=60)
    for attempts, ceiling in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (30, 60)):
        delays = [webhooks.backoff(attempts, settings) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1  # jittered
