"""Salad identities (api/salad_auth.py): users by Salad API key + organization + project,
workers by the instance-metadata JWT + project, against real HTTP stand-ins for Salad's
authentication service, public API and JWKS, with RSA and EC keys made here. Every test runs on
SQLite and PostgreSQL (the `database_url` fixture)."""

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.api.jobdefs import sync_job
from tests.support.api_process import ApiProcess
from tests.support.net import free_port, wait_until
from tests.support.salad_api import SaladApi
from tests.support.salad_identity import (
    FakeSaladIdentity,
    SigningKey,
    hs256_with_public_key,
    unsigned_token,
    worker_claims,
)

ORG, PROJECT = "acme", "production"
SERVICE_USER, SERVICE_PASSWORD = "kelpie-service", "service-" + uuid.uuid4().hex
LEEWAY_S = 30
JWKS_MIN_REFRESH_S = 2


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def salad_api():
    """Salad's public API: the organization's project with one container group. Its single
    accepted key (`salad_api.api_key`) is the user's Salad API key in these tests."""
    fake = SaladApi().start()
    fake.add_group(ORG, PROJECT, "trainer")
    fake.add_group(ORG, "staging", "trainer")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def identity(salad_api):
    fake = FakeSaladIdentity(SERVICE_USER, SERVICE_PASSWORD).start()
    fake.add_api_key(salad_api.api_key, ORG)
    fake.add_api_key(salad_api.api_key, "not-entitled", entitled=False)
    fake.add_signing_key(SigningKey.rsa("rsa-1"))
    fake.add_signing_key(SigningKey.ec("ec-1"))
    yield fake
    fake.stop()


def _env(identity: FakeSaladIdentity, salad_api: SaladApi, **overrides) -> dict:
    env = {
        "KELPIE_SALAD_AUTH_URL": identity.auth_url,
        "KELPIE_SALAD_AUTH_USERNAME": SERVICE_USER,
        "KELPIE_SALAD_AUTH_PASSWORD": SERVICE_PASSWORD,
        "KELPIE_SALAD_API_URL": salad_api.url,
        # One quick retry, so an outage of the public API is a 503 within a second.
        "KELPIE_SALAD_API_RETRIES": "1",
        "KELPIE_SALAD_API_BACKOFF_S": "0.05",
        "KELPIE_SALAD_JWKS_URL": identity.jwks_url,
        "KELPIE_SALAD_JWKS_MIN_REFRESH_S": str(JWKS_MIN_REFRESH_S),
        "KELPIE_SALAD_JWT_LEEWAY_S": str(LEEWAY_S),
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def server(database_url, identity, salad_api, api_server):
    """The API, trusting Salad answers for a minute and JWKS keys for a second (so every test
    also exercises the refresh path)."""
    return api_server(database_url, env=_env(identity, salad_api, KELPIE_SALAD_AUTH_CACHE_S="60",
                                             KELPIE_SALAD_JWKS_CACHE_S="1"))


@pytest.fixture
def fresh_identity(identity):
    """The identity stand-in, healthy again after the test whatever the test did to it."""
    yield identity
    identity.auth_failure = identity.jwks_failure = None
    identity.auth_delay = identity.jwks_delay = 0.0
    identity.declare_alg = True
    if identity._server is None:
        identity.start()


def call(server: ApiProcess, method: str, path: str, body=None, headers: dict | None = None):
    """One request with exactly these headers (no X-Kelpie-Key): (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, (json.loads(raw) if raw else None)


def key_headers(api_key: str, org: str | None = ORG, project: str | None = PROJECT) -> dict:
    headers = {"Salad-Api-Key": api_key}
    if org is not None:
        headers["Salad-Organization"] = org
    if project is not None:
        headers["Salad-Project"] = project
    return headers


def jwt_headers(token: str, project: str | None = PROJECT) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if project is not None:
        headers["Salad-Project"] = project
    return headers


def signing_key(identity: FakeSaladIdentity, kid: str) -> SigningKey:
    return next(k for k in identity.signing_keys if k.kid == kid)


def worker(identity, kid="rsa-1", *, org=ORG, machine_id=None, container_group_id=None,
           **claims) -> tuple[str, str, str]:
    """A fresh worker identity and its token: (token, machine_id, container_group_id)."""
    machine_id = machine_id or "machine-" + uuid.uuid4().hex[:8]
    container_group_id = container_group_id or str(uuid.uuid4())
    token = signing_key(identity, kid).issue(worker_claims(
        org, machine_id=machine_id, container_group_id=container_group_id, **claims))
    return token, machine_id, container_group_id


def claim(server, token, machine_id, container_group_id, project=PROJECT):
    return call(server, "GET", f"/work?machine_id={machine_id}"
                f"&container_group_id={container_group_id}", headers=jwt_headers(token, project))


# --- which scheme, and the 400/401 rules ------------------------------------------------------

def test_no_credentials_is_401(server):
    assert call(server, "GET", "/jobs")[0] == 401
    # An Authorization header of another scheme is no credential of ours either.
    status, error = call(server, "GET", "/jobs", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 401 and error["error"] == "unauthorized"


@pytest.mark.parametrize("org, project, field", [
    (None, PROJECT, "Salad-Organization"), (ORG, None, "Salad-Project"),
    (None, None, "Salad-Organization"), ("", PROJECT, "Salad-Organization")])
def test_salad_api_key_without_organization_or_project_is_400(server, identity, salad_api, org,
                                                              project, field):
    calls_before = len(identity.auth_calls())
    status, error = call(server, "GET", "/jobs", headers=key_headers(salad_api.api_key, org,
                                                                      project))
    assert status == 400, error
    assert error["error"] == "bad_request" and error["field"] == field
    assert len(identity.auth_calls()) == calls_before  # refused before asking Salad


def test_bearer_token_without_project_is_400(server, identity):
    token, machine_id, group = worker(identity)
    status, error = call(server, "GET", f"/work?machine_id={machine_id}",
                         headers=jwt_headers(token, project=None))
    assert status == 400 and error["field"] == "Salad-Project"


def test_kelpie_key_still_comes_first(server, salad_api):
    # A valid Kelpie key decides even when (bogus) Salad headers come with it.
    headers = {"X-Kelpie-Key": server.admin_key, **key_headers("bogus"),
               "Authorization": "Bearer not-a-jwt"}
    status, me = call(server, "GET", "/users/me", headers=headers)
    assert status == 200 and me["is_admin"]


# --- Salad API keys -----------------------------------------------------------------------------

def test_salad_api_key_is_checked_with_the_auth_service_and_maps_to_the_org_user(
        server, identity, salad_api):
    status, me = call(server, "GET", "/users/me", headers=key_headers(salad_api.api_key))
    assert status == 200, me
    assert me["id"] == f"salad:{ORG}" and me["org"] == ORG and not me["is_admin"]
    asked = [c for c in identity.auth_calls() if c["body"]["organization_name"] == ORG]
    assert asked, "the authentication service was not asked"
    assert asked[0]["body"] == {"api_key": salad_api.api_key, "organization_name": ORG}
    assert asked[0]["authorization"].startswith("Basic ")
    # The project was checked through the public API, with the caller's own key.
    listed = salad_api.calls_to(f"/organizations/{ORG}/projects/{PROJECT}/containers",
                                method="GET")
    assert listed and listed[0].api_key == salad_api.api_key


def test_salad_api_key_answers_are_cached(server, identity, salad_api):
    headers = key_headers(salad_api.api_key, project="staging")
    assert call(server, "GET", "/jobs", headers=headers)[0] == 200
    before = len(identity.auth_calls())
    for _ in range(5):
        assert call(server, "GET", "/jobs", headers=headers)[0] == 200
    assert len(identity.auth_calls()) == before


@pytest.mark.parametrize("api_key, org, project, reason", [
    ("not-a-salad-key", ORG, PROJECT, "invalid Salad-Api-Key"),
    (None, "someone-else", PROJECT, "not valid for organization"),
    (None, "not-entitled", PROJECT, "not entitled"),
    (None, ORG, "no-such-project", "not found"),
    (None, "bad/org", PROJECT, "invalid Salad-Organization"),
])
def test_invalid_salad_credentials_are_403(server, salad_api, api_key, org, project, reason):
    status, error = call(server, "GET", "/jobs",
                         headers=key_headers(api_key or salad_api.api_key, org, project))
    assert status == 403, error
    assert error["error"] == "forbidden" and reason in error["message"]


def test_a_key_the_public_api_refuses_is_403(server, identity, salad_api):
    # Valid at the authentication service, but Salad's public API does not let it see the
    # project (the stand-in accepts only its own key).
    other_key = "other-" + uuid.uuid4().hex
    identity.add_api_key(other_key, ORG)
    status, error = call(server, "GET", "/jobs", headers=key_headers(other_key))
    assert status == 403 and "may not use project" in error["message"]


def test_wrong_service_credentials_are_503_not_the_callers_fault(database_url, identity,
                                                                 salad_api, tmp_path):
    process = ApiProcess(database_url, log_path=tmp_path / "api.log",
                         env=_env(identity, salad_api, KELPIE_SALAD_AUTH_PASSWORD="wrong"))
    with process:
        status, error = call(process, "GET", "/jobs", headers=key_headers(salad_api.api_key))
    assert status == 503 and error["error"] == "unavailable"


def test_auth_service_down_with_nothing_cached_is_503(server, fresh_identity, salad_api):
    for failure in (503, 500, 404):
        fresh_identity.auth_failure = failure
        status, error = call(server, "GET", "/jobs",
                             headers=key_headers("never-seen-" + uuid.uuid4().hex))
        assert status == 503, (failure, error)
        assert error["error"] == "unavailable"
    fresh_identity.auth_failure = None
    fresh_identity.stop()  # connection refused
    status, error = call(server, "GET", "/jobs", headers=key_headers("never-seen-2"))
    assert status == 503, error


def test_public_api_down_with_nothing_cached_is_503(server, salad_api):
    salad_api.fail_next(503, times=2, path_contains="/projects/fresh-project/")
    salad_api.add_group(ORG, "fresh-project", "trainer")
    status, error = call(server, "GET", "/jobs",
                         headers=key_headers(salad_api.api_key, project="fresh-project"))
    assert status == 503, error
    # ... and once it is back the same credentials work (the outage was not cached).
    status, _ = call(server, "GET", "/jobs",
                     headers=key_headers(salad_api.api_key, project="fresh-project"))
    assert status == 200


def test_salad_answers_never_block_the_event_loop(server, fresh_identity, salad_api):
    """While the authentication service takes 2 s to answer, the API keeps serving, and
    concurrent requests with the same credentials share one call to Salad."""
    fresh_identity.auth_delay = 2.0
    salad_api.add_group(ORG, "slow-project", "trainer")
    headers = key_headers(salad_api.api_key, project="slow-project")
    before = len(fresh_identity.auth_calls())
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        call(server, "GET", "/jobs", headers=headers)[0])) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(fresh_identity.auth_calls()) > before, timeout=10)
    started = time.monotonic()
    assert call(server, "GET", "/healthz")[0] == 200
    assert time.monotonic() - started < 1.5
    for thread in threads:
        thread.join()
    assert results == [200] * 4
    assert len(fresh_identity.auth_calls()) == before + 1


# --- worker JWTs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_worker_token_signed_with_rsa_or_ec_is_accepted(server, identity, kid):
    token, machine_id, group = worker(identity, kid)
    status, work = claim(server, token, machine_id, group)
    assert status == 200 and work == []
    # A workload token is a worker credential: the worker protocol and nothing else.
    status, error = call(server, "GET", "/users/me", headers=jwt_headers(token))
    assert status == 403 and "scope worker" in error["message"], error


def test_job_submitted_with_salad_api_key_is_claimed_by_the_orgs_jwt_worker(
        server, identity, salad_api):
    token, machine_id, group = worker(identity, "ec-1")
    user = key_headers(salad_api.api_key)
    status, job = call(server, "POST", "/jobs", sync_job(container_group_id=group), headers=user)
    assert status == 202, job

    # A worker of another organization, same container group id, gets nothing.
    stranger, stranger_machine, _ = worker(identity, org="other-org", container_group_id=group)
    assert claim(server, stranger, stranger_machine, group) == (200, [])

    status, work = claim(server, token, machine_id, group)
    assert status == 200 and [j["id"] for j in work] == [job["id"]]
    identity_body = {"machine_id": machine_id, "container_group_id": group}
    status, beat = call(server, "POST", f"/jobs/{job['id']}/heartbeat", identity_body,
                        headers=jwt_headers(token))
    assert (status, beat) == (200, {"status": "running"})
    status, _ = call(server, "POST", f"/jobs/{job['id']}/completed", identity_body,
                     headers=jwt_headers(token))
    assert status == 200
    status, done = call(server, "GET", f"/jobs/{job['id']}", headers=user)
    assert status == 200 and done["status"] == "completed"


def test_worker_may_only_act_for_its_own_machine_and_container_group(server, identity,
                                                                     salad_api):
    token, machine_id, group = worker(identity)
    other_group = str(uuid.uuid4())
    user = key_headers(salad_api.api_key)
    _, job = call(server, "POST", "/jobs", sync_job(container_group_id=group), headers=user)
    _, other_job = call(server, "POST", "/jobs", sync_job(container_group_id=other_group),
                        headers=user)

    # A token for another container group (or machine) cannot claim this group's work.
    status, error = claim(server, token, machine_id, other_group)
    assert status == 403 and "container_group_id" in error["message"]
    assert claim(server, token, "machine-x", group)[0] == 403
    status, _ = call(server, "GET", f"/work?machine_id={machine_id}", headers=jwt_headers(token))
    assert status == 403  # no container group given: not the token's

    status, work = claim(server, token, machine_id, group)
    assert [j["id"] for j in work] == [job["id"]]
    for route, extra in (("heartbeat", {}), ("completed", {}), ("failed", {"exit_code": 1})):
        for body in ({"machine_id": "machine-x", "container_group_id": group},
                     {"machine_id": machine_id, "container_group_id": other_group}):
            status, error = call(server, "POST", f"/jobs/{job['id']}/{route}",
                                 {**body, **extra}, headers=jwt_headers(token))
            assert status == 403, (route, body, error)
    # The other group's job is untouched; this one is still running for our machine.
    _, other = call(server, "GET", f"/jobs/{other_job['id']}", headers=user)
    _, ours = call(server, "GET", f"/jobs/{job['id']}", headers=user)
    assert other["status"] == "pending"
    assert ours["status"] == "running" and ours["machine_id"] == machine_id


def test_expired_and_not_yet_valid_tokens_are_403(server, identity):
    now = time.time()
    cases = {
        "expired": dict(issued_at=now - 7200, lifetime=3600),
        "not yet valid": dict(issued_at=now + 600),
    }
    for reason, claims in cases.items():
        token, machine_id, group = worker(identity, **claims)
        status, error = claim(server, token, machine_id, group)
        assert status == 403 and reason in error["message"], (reason, error)
    # Within the leeway both are fine (a few seconds of clock skew between Salad and us).
    for claims in (dict(issued_at=now - 3600 - LEEWAY_S / 2, lifetime=3600),
                   dict(issued_at=now + LEEWAY_S / 2)):
        token, machine_id, group = worker(identity, **claims)
        assert claim(server, token, machine_id, group)[0] == 200


def test_a_token_without_exp_is_403(server, identity):
    claims = worker_claims(ORG, machine_id="m-noexp", container_group_id="cg-noexp")
    del claims["exp"]
    token = signing_key(identity, "rsa-1").issue(claims)
    assert claim(server, token, "m-noexp", "cg-noexp")[0] == 403


@pytest.mark.parametrize("missing", ["salad_organization_name", "salad_machine_id",
                                     "salad_container_group_id"])
def test_a_token_missing_a_salad_claim_is_403(server, identity, missing):
    claims = worker_claims(ORG, machine_id="m-claims", container_group_id="cg-claims")
    del claims[missing]
    token = signing_key(identity, "ec-1").issue(claims)
    status, error = claim(server, token, "m-claims", "cg-claims")
    assert status == 403, error


def test_unsigned_and_symmetric_tokens_are_refused(server, identity):
    claims = worker_claims(ORG, machine_id="m-alg", container_group_id="cg-alg")
    rsa_key, ec_key = signing_key(identity, "rsa-1"), signing_key(identity, "ec-1")
    attacks = {
        "alg none": unsigned_token({**claims}),
        "HS256 with the RSA public key": hs256_with_public_key(rsa_key, claims),
        "HS256 with the EC public key": hs256_with_public_key(ec_key, claims),
        # The RSA key's signature presented under the EC key's kid (and vice versa).
        "RS256 under an ES256 kid": rsa_key.issue(claims, kid="ec-1"),
        "ES256 under an RS256 kid": ec_key.issue(claims, kid="rsa-1"),
        # A key Salad never published, claiming a published kid.
        "unpublished key": SigningKey.rsa("rsa-1").issue(claims),
        "not a JWT": "not.a.jwt",
        "tampered": rsa_key.issue(claims)[:-4] + "AAAA",
    }
    for name, token in attacks.items():
        status, error = claim(server, token, "m-alg", "cg-alg")
        assert status == 403, (name, status, error)
        assert error["error"] == "forbidden"


def test_key_rotation_new_kid_is_fetched(server, identity):
    fetches = len(identity.jwks_calls())
    new_key = identity.add_signing_key(SigningKey.ec("ec-rotated-" + uuid.uuid4().hex[:6]))
    token, machine_id, group = worker(identity, new_key.kid)
    # At most JWKS_MIN_REFRESH_S after the last fetch, the new kid is known.
    wait_until(lambda: claim(server, token, machine_id, group)[0] == 200,
               timeout=JWKS_MIN_REFRESH_S + 10, interval=0.2)
    assert len(identity.jwks_calls()) > fetches

    # A key Salad withdraws stops working once the JWKS is refetched.
    identity.remove_signing_key(new_key.kid)
    wait_until(lambda: claim(server, token, machine_id, group)[0] == 403,
               timeout=JWKS_MIN_REFRESH_S + 10, interval=0.2)


def test_jwks_keys_without_alg_imply_it_from_their_type(server, fresh_identity):
    # Salad may publish keys without `alg`: RSA then means RS256, EC P-256 means ES256.
    fresh_identity.declare_alg = False
    fetches = len(fresh_identity.jwks_calls())
    wait_until(lambda: len(fresh_identity.jwks_calls()) > fetches or
               claim(server, *worker(fresh_identity))[0] != 200, timeout=15, interval=0.3)
    for kid in ("rsa-1", "ec-1"):
        assert claim(server, *worker(fresh_identity, kid))[0] == 200
    claims = worker_claims(ORG, machine_id="m-noalg", container_group_id="cg-noalg")
    rsa_key = signing_key(fresh_identity, "rsa-1")
    # Still only the implied one: an RSA key does not verify RS512 or PS256 tokens.
    for alg in ("RS512", "PS256"):
        assert claim(server, rsa_key.issue(claims, alg=alg), "m-noalg", "cg-noalg")[0] == 403


def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(server, identity):
    stranger = SigningKey.rsa("unknown-kid")
    claims = worker_claims(ORG, machine_id="m-kid", container_group_id="cg-kid")
    started, fetches = time.monotonic(), len(identity.jwks_calls())
    for index in range(10):
        token = stranger.issue(claims, kid=f"made-up-{index}")
        assert claim(server, token, "m-kid", "cg-kid")[0] == 403
    elapsed = time.monotonic() - started
    assert len(identity.jwks_calls()) - fetches <= 1 + int(elapsed / JWKS_MIN_REFRESH_S)


def test_cached_jwks_keys_keep_working_while_the_jwks_endpoint_is_down(server, fresh_identity):
    token, machine_id, group = worker(fresh_identity, "ec-1")
    assert claim(server, token, machine_id, group)[0] == 200
    fresh_identity.jwks_failure = 500
    fetches = len(fresh_identity.jwks_calls())
    # The keys are older than KELPIE_SALAD_JWKS_CACHE_S (1 s) by now: a refresh is tried, fails,
    # and the cached keys go on verifying.
    wait_until(lambda: len(fresh_identity.jwks_calls()) > fetches
               or claim(server, token, machine_id, group)[0] != 200, timeout=15, interval=0.3)
    assert claim(server, token, machine_id, group)[0] == 200
    fresh_identity.stop()  # connection refused now
    for kid in ("rsa-1", "ec-1"):
        token, machine_id, group = worker(fresh_identity, kid)
        assert claim(server, token, machine_id, group)[0] == 200


def test_a_hanging_jwks_endpoint_does_not_hold_workers(server, fresh_identity):
    token, machine_id, group = worker(fresh_identity, "rsa-1")
    assert claim(server, token, machine_id, group)[0] == 200
    fresh_identity.jwks_delay = 5.0
    fetches = len(fresh_identity.jwks_calls())
    # Keys older than KELPIE_SALAD_JWKS_CACHE_S are refreshed in the background: requests are
    # answered from the cache while the refresh hangs.
    deadline = time.monotonic() + JWKS_MIN_REFRESH_S + 5
    while len(fresh_identity.jwks_calls()) == fetches and time.monotonic() < deadline:
        started = time.monotonic()
        assert claim(server, token, machine_id, group)[0] == 200
        assert time.monotonic() - started < 2.0
        time.sleep(0.2)
    assert len(fresh_identity.jwks_calls()) > fetches, "no refresh was attempted"
    started = time.monotonic()
    assert claim(server, token, machine_id, group)[0] == 200
    assert time.monotonic() - started < 2.0


def test_jwt_without_any_reachable_jwks_is_503_then_recovers(database_url, identity,
                                                              salad_api, tmp_path):
    port = free_port()  # nothing listens here
    env = _env(identity, salad_api,
               KELPIE_SALAD_JWKS_URL=f"http://127.0.0.1:{port}/.well-known/workload-jwks.json",
               KELPIE_SALAD_JWKS_MIN_REFRESH_S="60")
    with ApiProcess(database_url, log_path=tmp_path / "api.log", env=env) as process:
        token, machine_id, group = worker(identity)
        status, error = claim(process, token, machine_id, group)
        assert status == 503 and error["error"] == "unavailable", error
        # Still 503, and no new attempt within the refresh interval (no hammering).
        assert claim(process, token, machine_id, group)[0] == 503


def test_stale_salad_answer_stands_in_while_salad_is_down(database_url, fresh_identity,
                                                          salad_api, tmp_path):
    env = _env(fresh_identity, salad_api, KELPIE_SALAD_AUTH_CACHE_S="1",
               KELPIE_SALAD_AUTH_STALE_S="600")
    with ApiProcess(database_url, log_path=tmp_path / "api.log", env=env) as process:
        headers = key_headers(salad_api.api_key)
        assert call(process, "GET", "/jobs", headers=headers)[0] == 200
        asked = len(fresh_identity.auth_calls())
        time.sleep(1.2)  # let the answer expire (a fixed TTL, nothing to wait on)
        fresh_identity.auth_failure = 503
        status, _ = call(process, "GET", "/jobs", headers=headers)
        assert status == 200  # Salad was asked again, failed, the stale answer stood in
        assert len(fresh_identity.auth_calls()) > asked
        # Credentials never seen before get no such grace.
        status, _ = call(process, "GET", "/jobs", headers=key_headers("unseen-key"))
        assert status == 503
