"""The IMDS client and the API client against loopback stand-ins."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.client import ApiClient, ApiError, ApiUnavailable
from agent.imds import Imds
from tests.support.net import free_port


def test_imds_calls_carry_the_metadata_header(imds):
    client = Imds(imds.url)
    assert client.token() == "test-jwt"
    client.set_deletion_cost(5)
    client.set_deletion_cost(5)  # unchanged: not sent twice
    assert client.reallocate("too many failures")
    assert imds.deletion_costs() == [5]
    assert imds.reallocations == ["too many failures"]
    assert all(call["metadata_header"] == "true" for call in imds.calls)


def test_unreachable_imds_is_noted_once(caplog):
    client = Imds(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    with caplog.at_level("WARNING", logger="agent"):
        client.set_deletion_cost(1)
        client.set_deletion_cost(2)
        assert client.reallocate("x") is False
    noted = [r for r in caplog.records if "no instance metadata service" in r.getMessage()]
    assert len(noted) == 1


class FakeApi:
    """Answers from a script of (status, body) per path prefix; records requests."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "headers": dict(self.headers)})
                for prefix, answers in fake.script.items():
                    if self.path.startswith(prefix):
                        status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                        break
                else:
                    status, payload = 404, {"error": "not_found"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    api = FakeApi()
    yield api
    api.close()


def test_retries_5xx_then_succeeds(fake_api, make_config, imds):
    fake_api.script["/work"] = [(503, {}), (502, {}), (200, [{"id": "j1"}])]
    client = ApiClient(make_config(KELPIE_API_URL=fake_api.url, MAX_RETRIES=5,
                                   SALAD_MACHINE_ID="m1", SALAD_CONTAINER_GROUP_ID="g1"), Imds(
        imds.url))
    assert client.poll_work() == {"id": "j1"}
    assert len(fake_api.requests) == 3
    assert fake_api.requests[-1]["path"] == "/work?machine_id=m1&container_group_id=g1"
    assert fake_api.requests[-1]["headers"]["X-Kelpie-Key"] == "k"


def test_conflict_is_final_and_outage_is_reported(fake_api, make_config, imds):
    fake_api.script["/jobs/j1/completed"] = [(409, {"error": "conflict"})]
    client = ApiClient(make_config(KELPIE_API_URL=fake_api.url, KELPIE_REPORT_TIMEOUT_S=0),
                       Imds(imds.url))
    with pytest.raises(ApiError) as error:
        client.report_completed("j1")
    assert error.value.status == 409 and len(fake_api.requests) == 1
    down = ApiClient(make_config(KELPIE_API_URL=f"http://127.0.0.1:{free_port()}",
                                 MAX_RETRIES=2), Imds(imds.url))
    with pytest.raises(ApiUnavailable):
        down.heartbeat("j1")


def test_salad_key_and_imds_jwt_authentication(fake_api, make_config, imds):
    fake_api.script["/work"] = [(200, [])]
    salad = ApiClient(make_config(KELPIE_API_URL=fake_api.url, KELPIE_API_KEY="",
                                  SALAD_API_KEY="sk", SALAD_ORGANIZATION="o",
                                  SALAD_PROJECT="p"), Imds(imds.url))
    assert salad.poll_work() is None
    headers = fake_api.requests[-1]["headers"]
    assert (headers["Salad-Api-Key"], headers["Salad-Organization"],
            headers["Salad-Project"]) == ("sk", "o", "p")
    jwt = ApiClient(make_config(KELPIE_API_URL=fake_api.url, KELPIE_API_KEY="",
                                SALAD_PROJECT="p"), Imds(imds.url))
    jwt.poll_work()
    headers = fake_api.requests[-1]["headers"]
    assert headers["Authorization"] == "Bearer test-jwt" and headers["Salad-Project"] == "p"
    assert "X-Kelpie-Key" not in headers


def _jwt(claims: dict) -> str:
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_jwt_is_renewed_before_it_expires_and_after_a_refusal(fake_api, make_config, imds):
    import time

    issued = []

    def token(body):
        now = time.time()
        issued.append(_jwt({"iat": now, "exp": now + 1.0}))
        return 200, {"jwt": issued[-1]}

    imds.add_route("GET", "/v1/token", token)
    fake_api.script["/work"] = [(200, [])]
    client = ApiClient(make_config(KELPIE_API_URL=fake_api.url, KELPIE_API_KEY="",
                                   SALAD_PROJECT="p"), Imds(imds.url))
    client.poll_work()
    client.poll_work()
    assert len(issued) == 1  # still fresh: reused
    time.sleep(0.85)  # past four fifths of its 1 s lifetime
    client.poll_work()
    assert len(issued) == 2
    assert fake_api.requests[-1]["headers"]["Authorization"] == f"Bearer {issued[-1]}"

    fake_api.script["/work"] = [(403, {"error": "forbidden"}), (200, [])]
    client.poll_work()
    assert len(issued) == 3  # refused: fetched anew and the call repeated once


def test_a_hanging_api_does_not_hold_a_heartbeat(make_config, imds):
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        client = ApiClient(make_config(
            KELPIE_API_URL=f"http://127.0.0.1:{listener.getsockname()[1]}"), Imds(imds.url))
        started = time.monotonic()
        with pytest.raises(ApiUnavailable):
            client.heartbeat("j1", interval=1, attempts=1)
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_salad_key_organization_defaults_to_the_imds_tokens(fake_api, make_config, imds):
    imds.add_route("GET", "/v1/token", lambda body: (200, {"jwt": _jwt(
        {"salad_organization_name": "acme", "exp": 4102444800})}))
    fake_api.script["/work"] = [(200, [])]
    client = ApiClient(make_config(KELPIE_API_URL=fake_api.url, KELPIE_API_KEY="",
                                   SALAD_API_KEY="sk", SALAD_PROJECT="p"), Imds(imds.url))
    client.poll_work()
    headers = fake_api.requests[-1]["headers"]
    assert (headers["Salad-Api-Key"], headers["Salad-Organization"],
            headers["Salad-Project"]) == ("sk", "acme", "p")
