"""Salad identities: users by their Salad API key, workers by the instance-metadata JWT.

Two schemes, appended to `api.auth.SCHEMES` after the Kelpie key:

* `Salad-Api-Key` + `Salad-Organization` + `Salad-Project` (a user). Salad's authentication
  service (KELPIE_SALAD_AUTH_URL) is asked, with this service's own credentials as HTTP basic
  auth, whether the key is valid, the organization name is valid for it and the organization is
  entitled to Kelpie:
      POST <KELPIE_SALAD_AUTH_URL>   {"api_key": "...", "organization_name": "..."}
      200 {"is_api_key_valid": bool, "is_organization_name_valid": bool, "is_entitled": bool}
  The project is then checked by listing its container groups through Salad's public API
  (`api.salad.list_container_groups`). Answers, yes or no, are cached per process for
  KELPIE_SALAD_AUTH_CACHE_S; while Salad is unreachable a cached answer keeps standing for
  KELPIE_SALAD_AUTH_STALE_S more, after which the caller gets 503.

* `Authorization: Bearer <JWT>` + `Salad-Project` (a worker). The token is verified against the
  JWKS at KELPIE_SALAD_JWKS_URL with the one asymmetric algorithm its key declares; `none`,
  every HS* and any algorithm other than the key's own are refused, so a token "signed" with
  the public key as an HMAC secret never verifies. Keys are cached, refreshed every
  KELPIE_SALAD_JWKS_CACHE_S, refetched on an unknown `kid` at most once per
  KELPIE_SALAD_JWKS_MIN_REFRESH_S, and kept in use while the JWKS endpoint is down.

Either way the caller acts for the one Kelpie user of its Salad organization (made on first
use), so a job submitted with an organization's API key is claimable by that organization's
workers. An API key is scope `user` confined to the project it was checked with: it sees,
cancels and claims only jobs submitted under that project. A workload token is always scope
`worker` (api/scopes.py), bound to the machine and container group it names: any process in
any container can read it from the instance-metadata service, so it may run its own group's
jobs and nothing else.

All network calls run in threads (`asyncio.to_thread`), never on the event loop.
"""

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import jwt
from sanic import Request

from api import auth, db, salad, users
from api.config import Settings
from api.errors import Forbidden, Unavailable, ValidationError
from api.principal import USER, WORKER, Principal
from api.ttl_cache import TtlCache

log = logging.getLogger("kelpie.api.salad_auth")

# Seconds to wait for one of Salad's services before calling it unreachable.
HTTP_TIMEOUT = 10.0
# Signature algorithms a workload token may use: asymmetric only. A JWK declaring anything else
# (an HMAC `oct` key, `none`) is ignored, so no token can be verified with a shared secret.
ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
# The algorithm a JWK without an `alg` member stands for, by key type (and curve).
_IMPLIED_ALGORITHMS = {("RSA", None): "RS256", ("EC", "P-256"): "ES256",
                       ("EC", "P-384"): "ES384", ("EC", "P-521"): "ES512",
                       ("OKP", "Ed25519"): "EdDSA"}
# Salad names (organizations, projects) are short slugs; anything else is refused before it
# reaches a URL or a cache.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_CREDENTIAL_LENGTH = 8192
WORKER_CLAIMS = ("salad_organization_name", "salad_machine_id", "salad_container_group_id")


class SaladUnreachable(Exception):
    """One of Salad's services did not answer usefully (network error, 5xx, bad JSON)."""


# --- HTTP -------------------------------------------------------------------------------------

class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect would carry our service credentials (or a user's key) to another host.
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _http_json(method: str, url: str, body: dict | None = None,
               headers: dict | None = None) -> tuple[int, object]:
    """One JSON request (blocking: call it in a thread). Returns (status, decoded body) for any
    answer below 500; raises SaladUnreachable for everything else."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (OSError, ValueError) as error:
        raise SaladUnreachable(f"{url}: {error}") from None
    if status >= 500 or 300 <= status < 400:
        raise SaladUnreachable(f"{url} answered {status}")
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise SaladUnreachable(f"{url} answered {status} with a body that is not JSON") from None


# --- caches -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Verdict:
    """What Salad said about one set of credentials: a user, or why not."""

    user_id: str | None = None
    name: str = ""
    refusal: str | None = None


class _SingleFlight:
    """Concurrent requests for the same answer share one call to Salad."""

    def __init__(self):
        self._pending: dict[str, asyncio.Future] = {}

    async def run(self, key: str, make_coroutine):
        future = self._pending.get(key)
        if future is None:
            future = asyncio.ensure_future(make_coroutine())
            self._pending[key] = future
            future.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(future)


# --- Salad API keys ---------------------------------------------------------------------------

class ApiKeyVerifier:
    def __init__(self, settings: Settings):
        self.settings = settings
        # Answers kept `ttl` seconds, then `stale` seconds more for when Salad is down.
        self.cache: TtlCache[str, _Verdict] = TtlCache(settings.salad_auth_cache_seconds,
                                  settings.salad_auth_stale_seconds)
        self.flights = _SingleFlight()

    async def verify(self, api_key: str, org: str, project: str) -> _Verdict:
        # The key itself never sits in memory as a dictionary key, only its hash.
        cache_key = hashlib.sha256("\0".join((api_key, org, project)).encode()).hexdigest()
        verdict = self.cache.get(cache_key)
        if verdict is None:
            verdict = await self.flights.run(
                cache_key, lambda: self._ask_salad(cache_key, api_key, org, project))
        return verdict

    async def _ask_salad(self, cache_key: str, api_key: str, org: str, project: str) -> _Verdict:
        try:
            refusal = await asyncio.to_thread(self._check, api_key, org, project)
        except SaladUnreachable as error:
            stale = self.cache.get(cache_key, allow_stale=True)
            if stale is not None:
                log.warning("Salad unreachable, using a cached answer: %s", error)
                return stale
            log.error("cannot verify a Salad API key: %s", error)
            raise Unavailable("Salad's authentication service is unreachable; retry later") \
                from None
        verdict = _Verdict(refusal=refusal) if refusal is not None else _Verdict(
            user_id=users.salad_user_id(org), name=org)
        self.cache.put(cache_key, verdict)
        return verdict

    def _check(self, api_key: str, org: str, project: str) -> str | None:
        """Ask the authentication service, then the public API (blocking). None when all
        checks out, else why not."""
        refusal = self._ask_auth_service(api_key, org)
        if refusal is not None:
            return refusal
        try:
            # With the caller's own key: the project must exist *and* be theirs to see.
            salad.list_container_groups(org, project, api_key=api_key)
        except salad.SaladNotFound:
            return f"Salad project {project!r} not found in organization {org!r}"
        except salad.SaladError as error:
            if error.status is None or error.status >= 500 or error.status == 429:
                raise SaladUnreachable(f"Salad public API: {error}") from None
            return f"Salad-Api-Key may not use project {project!r} of organization {org!r}"
        return None

    def _ask_auth_service(self, api_key: str, org: str) -> str | None:
        """None when the key, organization and entitlement all check out; else the refusal."""
        s = self.settings
        credentials = base64.b64encode(
            f"{s.salad_auth_username or ''}:{s.salad_auth_password or ''}".encode()).decode()
        status, answer = _http_json("POST", s.salad_auth_url,
                                    {"api_key": api_key, "organization_name": org},
                                    {"Authorization": f"Basic {credentials}"})
        if status != 200 or not isinstance(answer, dict):
            # 401/403 here mean *our* service credentials were refused: a configuration error
            # on this side, never the caller's fault, so it is reported as unavailable.
            raise SaladUnreachable(f"authentication service answered {status}")
        if answer.get("is_api_key_valid") is not True:
            return "invalid Salad-Api-Key"
        if answer.get("is_organization_name_valid") is not True:
            return f"Salad-Api-Key is not valid for organization {org!r}"
        if answer.get("is_entitled") is not True:
            return f"Salad organization {org!r} is not entitled to use Kelpie"
        return None


# --- workload JWTs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Key:
    kid: str | None
    algorithm: str
    key: object  # the cryptography public key


def _parse_jwks(document) -> list[_Key]:
    """The usable signing keys of a JWKS; keys we cannot or must not use are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SaladUnreachable("JWKS is not a JSON object with a `keys` list")
    keys = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        algorithm = jwk.get("alg") or _IMPLIED_ALGORITHMS.get(
            (jwk.get("kty"), jwk.get("crv") if jwk.get("kty") != "RSA" else None))
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            log.warning("JWKS key %r skipped: algorithm %r is not allowed", jwk.get("kid"),
                        algorithm)
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
            log.warning("JWKS key %r skipped: %s", jwk.get("kid"), error)
            continue
        kid = jwk.get("kid")
        keys.append(_Key(kid if isinstance(kid, str) else None, algorithm, key))
    return keys


class JwksKeys:
    """Salad's workload signing keys, fetched on demand and kept through JWKS outages."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys: list[_Key] | None = None
        self._fetched = 0.0    # monotonic time of the last successful fetch
        self._attempted = float("-inf")  # ... of the last attempt, successful or not
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Future | None = None  # the background refresh, kept referenced

    def _find(self, kid: str | None, algorithm: str) -> list[_Key]:
        return [k for k in self.keys or () if k.kid == kid and k.algorithm == algorithm] \
            if kid is not None else [k for k in self.keys or () if k.algorithm == algorithm]

    def _wants_fetch(self, kid: str | None, algorithm: str) -> bool:
        """No keys yet, keys past their age, or none for this token (a rotated-in kid)."""
        return (self.keys is None
                or time.monotonic() - self._fetched >= self.settings.salad_jwks_cache_seconds
                or not self._find(kid, algorithm))

    def _may_fetch(self) -> bool:
        return time.monotonic() - self._attempted >= self.settings.salad_jwks_min_refresh_seconds

    async def candidates(self, kid: str | None, algorithm: str) -> list[_Key]:
        """The keys a token with this header may be verified with (refetching if the kid is
        new to us or the keys are old). Raises Unavailable when no keys were ever fetched."""
        if self._wants_fetch(kid, algorithm):
            if self._find(kid, algorithm):
                # Only old keys: refresh in the background and answer from the cache now, so a
                # slow or hanging JWKS endpoint never holds a worker's request.
                if not self._lock.locked() and self._may_fetch():
                    self._refresh = asyncio.ensure_future(self._fetch_locked())
            else:
                await self._fetch_locked(kid, algorithm)
        if self.keys is None:
            raise Unavailable("Salad's JWKS is unreachable; cannot verify worker tokens yet")
        return self._find(kid, algorithm)

    async def _fetch_locked(self, kid: str | None = None, algorithm: str | None = None) -> None:
        async with self._lock:
            # Another request may have fetched while this one waited for the lock.
            wanted = algorithm is None or self._wants_fetch(kid, algorithm)
            if wanted and self._may_fetch():
                await self._fetch()

    async def _fetch(self) -> None:
        self._attempted = time.monotonic()
        url = self.settings.salad_jwks_url
        try:
            status, document = await asyncio.to_thread(_http_json, "GET", url)
            if status != 200:
                raise SaladUnreachable(f"{url} answered {status}")
            keys = _parse_jwks(document)
        except SaladUnreachable as error:
            log.warning("JWKS refresh failed (%s); %s", error,
                        "keeping the cached keys" if self.keys is not None else "no keys yet")
            return
        self.keys, self._fetched = keys, time.monotonic()
        log.info("JWKS fetched: %d signing keys (%s)", len(keys),
                 ", ".join(str(k.kid) for k in keys))


class JwtVerifier:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.jwks = JwksKeys(settings)
        # organization -> (user id, name): a heartbeat costs no user lookup.
        self._users: TtlCache[str, tuple[str, str]] = TtlCache(settings.auth_cache_seconds)

    async def verify(self, token: str) -> dict:
        """The verified claims of a workload token; Forbidden for anything not genuine."""
        if len(token) > MAX_CREDENTIAL_LENGTH:
            raise Forbidden("invalid Bearer token: too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Forbidden("invalid Bearer token: not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        # Checked before any key is looked at: `none` and HS* never reach a verifier.
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise Forbidden(f"invalid Bearer token: algorithm {algorithm!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise Forbidden("invalid Bearer token: bad kid")
        candidates = await self.jwks.candidates(kid, algorithm)
        if not candidates:
            raise Forbidden("invalid Bearer token: not signed by a known Salad key")
        s = self.settings
        error: jwt.PyJWTError | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token, candidate.key, algorithms=[candidate.algorithm],
                    leeway=s.salad_jwt_leeway_seconds,
                    audience=s.salad_jwt_audience, issuer=s.salad_jwt_issuer,
                    options={"require": ["exp", *WORKER_CLAIMS],
                             "verify_aud": s.salad_jwt_audience is not None})
                break
            except jwt.InvalidSignatureError as failure:
                error = failure  # another key with the same kid/algorithm may match
            except jwt.ExpiredSignatureError:
                raise Forbidden("invalid Bearer token: expired") from None
            except jwt.ImmatureSignatureError:
                raise Forbidden("invalid Bearer token: not yet valid") from None
            except jwt.PyJWTError as failure:
                raise Forbidden(f"invalid Bearer token: {failure}") from None
        else:
            raise Forbidden(f"invalid Bearer token: {error}")
        for claim in WORKER_CLAIMS:
            value = claims.get(claim)
            if not isinstance(value, str) or not value or len(value) > 255:
                raise Forbidden(f"invalid Bearer token: claim {claim} must be a string")
        return claims

    async def user_for(self, org: str, project: str) -> tuple[str, str]:
        known = self._users.get(org)
        if known is not None:
            return known
        user = await db.run(users.find_or_create_for_org, org, project)
        self._users.put(org, (user.id, user.name))
        return user.id, user.name


# --- the schemes ------------------------------------------------------------------------------

class SaladIdentity:
    """This process's verifiers and their caches (`app.ctx.salad_identity`, made by
    create_app)."""

    def __init__(self, settings: Settings):
        self.api_keys = ApiKeyVerifier(settings)
        self.tokens = JwtVerifier(settings)


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    return value.strip() if value is not None and value.strip() else None


def _name(request: Request, header: str, needed_by: str) -> str:
    value = _header(request, header)
    if value is None:
        raise ValidationError(header, f"header is required with {needed_by}")
    if not _NAME.fullmatch(value):
        raise Forbidden(f"invalid {header}")
    return value


async def salad_api_key(request: Request) -> Principal | None:
    api_key = _header(request, "salad-api-key")
    if api_key is None:
        return None
    org = _name(request, "Salad-Organization", "Salad-Api-Key")
    project = _name(request, "Salad-Project", "Salad-Api-Key")
    if len(api_key) > MAX_CREDENTIAL_LENGTH:
        raise Forbidden("invalid Salad-Api-Key")
    if not request.app.ctx.settings.salad_auth_url:
        raise Forbidden("this server does not accept Salad API keys "
                        "(KELPIE_SALAD_AUTH_URL is not set)")
    verifier = request.app.ctx.salad_identity.api_keys
    verdict = await verifier.verify(api_key, org, project)
    if verdict.user_id is None:
        raise Forbidden(verdict.refusal or "invalid Salad credentials")
    # Looked up (or made again) on every request, not cached with Salad's answer: after the
    # administrator deletes users, a cached "yes" must not name a user that is gone.
    user = await db.run(users.find_or_create_for_org, org, project)
    return Principal(user_id=user.id, scope=USER, name=user.name, organization=org,
                     project=project)


async def salad_jwt(request: Request) -> Principal | None:
    authorization = _header(request, "authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    project = _name(request, "Salad-Project", "a Bearer token")
    verifier = request.app.ctx.salad_identity.tokens
    claims = await verifier.verify(token.strip())
    org = claims["salad_organization_name"]
    user_id, name = await verifier.user_for(org, project)
    return Principal(user_id=user_id, scope=WORKER, name=name, organization=org,
                     project=project, machine_id=claims["salad_machine_id"],
                     container_group_ids=(claims["salad_container_group_id"],))


auth.SCHEMES.extend([salad_api_key, salad_jwt])
