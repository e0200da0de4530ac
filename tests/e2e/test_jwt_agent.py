"""A full agent run authenticated only by the Salad instance-metadata JWT: the job is submitted
with a Salad API key (organization + project), and an agent with no Kelpie key claims, runs and
completes it with the token the IMDS stand-in issues, signed by a key made here and published
by the JWKS stand-in."""

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.harness import Jobs, read_object, sync_block, train_command
from tests.support.api_process import ApiProcess
from tests.support.salad_api import SaladApi
from tests.support.salad_identity import FakeSaladIdentity, SigningKey, worker_claims

ORG, PROJECT = "acme-e2e", "production"


@pytest.fixture(scope="module")
def salad_api():
    fake = SaladApi().start()
    fake.add_group(ORG, PROJECT, "trainer")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def identity(salad_api):
    fake = FakeSaladIdentity().start()
    fake.add_api_key(salad_api.api_key, ORG)
    fake.add_signing_key(SigningKey.ec("e2e-ec"))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def salad_server(identity, salad_api, tmp_path_factory):
    """An API that knows Salad's identity services (SQLite, like the rest of e2e). No leeway,
    so an expired token is refused the moment it expires."""
    directory = tmp_path_factory.mktemp("salad-api")
    server = ApiProcess(f"sqlite:///{directory / 'kelpie.db'}", log_path=directory / "api.log",
                        env={"KELPIE_SALAD_AUTH_URL": identity.auth_url,
                             "KELPIE_SALAD_AUTH_USERNAME": identity.username,
                             "KELPIE_SALAD_AUTH_PASSWORD": identity.password,
                             "KELPIE_SALAD_API_URL": salad_api.url,
                             "KELPIE_SALAD_JWKS_URL": identity.jwks_url,
                             "KELPIE_SALAD_JWT_LEEWAY_S": "0"})
    server.start()
    yield server
    server.stop()


def submit_with_salad_key(server: ApiProcess, salad_api: SaladApi, job: dict) -> dict:
    request = urllib.request.Request(server.url + "/jobs", data=json.dumps(job).encode(),
                                     method="POST")
    for name, value in {"Content-Type": "application/json", "Salad-Api-Key": salad_api.api_key,
                        "Salad-Organization": ORG, "Salad-Project": PROJECT}.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"submit answered {error.code}: {error.read()!r}") from None


def issue_tokens(imds, identity, machine_id: str, group: str, lifetime: float) -> list[str]:
    """Make the IMDS stand-in hand out a fresh token on every /v1/token call."""
    issued: list[str] = []
    key = identity.signing_keys[0]

    def token(body):
        issued.append(key.issue(worker_claims(ORG, machine_id=machine_id,
                                              container_group_id=group, lifetime=lifetime)))
        return 200, {"jwt": issued[-1]}

    imds.add_route("GET", "/v1/token", token)
    return issued


def jwt_agent(agents, salad_server, machine_id, **env):
    # No Kelpie key, no Salad API key: the IMDS token is the only credential.
    return agents(machine_id, KELPIE_API_URL=salad_server.url, KELPIE_API_KEY="",
                  SALAD_API_KEY="", SALAD_PROJECT=PROJECT, **env)


def test_full_agent_run_authenticated_only_by_jwt(salad_server, salad_api, identity, imds,
                                                  agents, s3, bucket, group):
    s3.put_object(Bucket=bucket, Key="jwt/inputs/data.txt", Body=b"from the bucket")
    job = submit_with_salad_key(salad_server, salad_api, {
        **train_command(3, 0.05, "--input-dir", "inputs", "--checkpoint-dir", "checkpoints",
                        "--output-dir", "outputs"),
        "sync": sync_block(bucket, "jwt"), "heartbeat_interval": 1,
        "container_group_id": group})
    issued = issue_tokens(imds, identity, "machine-jwt", group, lifetime=3600)
    agent = jwt_agent(agents, salad_server, "machine-jwt")

    watcher = Jobs(salad_server, salad_server.admin_key, group)
    done = watcher.wait_status(job["id"], "completed", timeout=90, agents=[agent])

    assert done["machine_id"] == "machine-jwt"
    result = json.loads(read_object(s3, bucket, "jwt/outputs/result.json"))
    assert result["steps"] == 3 and result["inputs"] == ["data.txt"]
    assert issued, "the agent never asked the IMDS for a token"
    assert identity.jwks_calls(), "the API never fetched the JWKS"


def test_agent_renews_its_jwt_before_it_expires(salad_server, salad_api, identity, imds,
                                                agents, bucket, group):
    # Tokens live 6 s; the job runs ~12 s with a heartbeat every second, then reports.
    job = submit_with_salad_key(salad_server, salad_api, {
        **train_command(12, 1.0, "--input-dir", "inputs", "--checkpoint-dir", "checkpoints",
                        "--output-dir", "outputs"),
        "sync": sync_block(bucket, "renew"), "heartbeat_interval": 1,
        "container_group_id": group})
    issued = issue_tokens(imds, identity, "machine-renew", group, lifetime=6)
    started = time.monotonic()
    agent = jwt_agent(agents, salad_server, "machine-renew")

    watcher = Jobs(salad_server, salad_server.admin_key, group)
    done = watcher.wait_status(job["id"], "completed", "failed", timeout=40, agents=[agent])

    assert done["status"] == "completed" and done["num_failures"] == 0, done
    # One machine ran it start to finish: renewing the token never cost the job its lease.
    _, history = salad_server.request("GET", f"/jobs/{job['id']}/events")
    assert [event["kind"] for event in history["events"]].count("assigned") == 1, history
    assert len(issued) >= 2 and time.monotonic() - started > 6
