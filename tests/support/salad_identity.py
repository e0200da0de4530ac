"""Stand-ins for Salad's identity services on loopback: the authentication service that
vouches for Salad API keys, and the JWKS that publishes the keys workload JWTs are signed with.

Both are served by one real HTTP server (`FakeSaladIdentity`), with real RSA and EC keys
made in the test (`SigningKey`), so the API verifies real signatures over real HTTP.

    identity = FakeSaladIdentity(username="kelpie", password="secret").start()
    identity.add_api_key("salad-key-1", "acme")            # valid, entitled
    rsa = identity.add_signing_key(SigningKey.rsa("kid-1")) # published in the JWKS
    token = rsa.issue(worker_claims("acme", machine_id="m1", container_group_id="cg1"))
"""

import base64
import json
import threading
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.loopback_http import LoopbackServer, Request

AUTH_PATH = "/api/v1/kelpie/authenticate"
JWKS_PATH = "/.well-known/workload-jwks.json"


class SigningKey:
    """A private key the stand-in signs workload tokens with, and its public JWK."""

    def __init__(self, kid: str, private_key, alg: str):
        self.kid = kid
        self.private_key = private_key
        self.alg = alg

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256") -> "SigningKey":
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), alg)

    @classmethod
    def ec(cls, kid: str) -> "SigningKey":
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def public_jwk(self, declare_alg: bool = True) -> dict:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = json.loads(algorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig"})
        if declare_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def issue(self, claims: dict, *, kid: str | None = "<own>", alg: str | None = None) -> str:
        """A token signed by this key; `kid=None` leaves the kid out of the header."""
        headers = {} if kid is None else {"kid": self.kid if kid == "<own>" else kid}
        return jwt.encode(claims, self.private_key, algorithm=alg or self.alg, headers=headers)


def worker_claims(org: str, *, machine_id: str = "machine-1",
                  container_group_id: str = "cg-1", workload_id: str | None = None,
                  lifetime: float = 3600, issued_at: float | None = None, **extra) -> dict:
    """The claims Salad puts in a workload token, valid from now for `lifetime` seconds."""
    now = time.time() if issued_at is None else issued_at
    claims = {
        "salad_organization_name": org,
        "salad_machine_id": machine_id,
        "salad_container_group_id": container_group_id,
        "salad_workload_id": workload_id or str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
    }
    claims.update(extra)
    return claims


def unsigned_token(claims: dict) -> str:
    """A token with `alg: none` and no signature, as an attacker would send it."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hs256_with_public_key(signing_key: SigningKey, claims: dict) -> str:
    """The algorithm-confusion attack: HS256 'signed' with the published public key as the
    HMAC secret. PyJWT refuses to do this itself, so the MAC is computed by hand."""
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signing_key.kid}).encode())
    payload = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(signing_key.public_pem(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


class FakeSaladIdentity(LoopbackServer):
    """Salad's authentication service and workload JWKS, recording every call.

    Auth service: POST AUTH_PATH with HTTP basic auth (the Kelpie service's credentials) and
    `{"api_key", "organization_name"}`; answers 200 with `is_api_key_valid`,
    `is_organization_name_valid`, `is_entitled`; 401 on wrong service credentials.
    """

    def __init__(self, username: str = "kelpie-service", password: str = "service-secret"):
        super().__init__()
        self.username = username
        self.password = password
        # api key -> {organization name -> entitled}
        self.api_keys: dict[str, dict[str, bool]] = {}
        self.signing_keys: list[SigningKey] = []
        self.declare_alg = True
        # When set, the endpoint answers this status instead of working (a simulated outage).
        self.auth_failure: int | None = None
        self.jwks_failure: int | None = None
        # Seconds the authentication service / the JWKS take to answer (a slow Salad).
        self.auth_delay = 0.0
        self.jwks_delay = 0.0
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    # --- configuration ---

    def add_api_key(self, api_key: str, org: str, entitled: bool = True) -> None:
        with self._lock:
            self.api_keys.setdefault(api_key, {})[org] = entitled

    def add_signing_key(self, key: SigningKey) -> SigningKey:
        with self._lock:
            self.signing_keys.append(key)
        return key

    def remove_signing_key(self, kid: str) -> None:
        with self._lock:
            self.signing_keys = [k for k in self.signing_keys if k.kid != kid]

    def jwks(self) -> dict:
        with self._lock:
            return {"keys": [k.public_jwk(self.declare_alg) for k in self.signing_keys]}

    # --- queries for tests ---

    def calls_to(self, path: str) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["path"] == path]

    def auth_calls(self) -> list[dict]:
        return self.calls_to(AUTH_PATH)

    def jwks_calls(self) -> list[dict]:
        return self.calls_to(JWKS_PATH)

    # --- endpoints ---

    def _authenticate(self, headers, body) -> tuple[int, dict]:
        if self.auth_delay:
            time.sleep(self.auth_delay)
        if self.auth_failure:
            return self.auth_failure, {"error": "simulated outage"}
        expected = "Basic " + base64.b64encode(
            f"{self.username}:{self.password}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "service credentials required"}
        if not isinstance(body, dict):
            return 400, {"error": "JSON object required"}
        with self._lock:
            orgs = self.api_keys.get(body.get("api_key"))
        org = body.get("organization_name")
        key_valid = orgs is not None
        org_valid = key_valid and org in orgs
        return 200, {"is_api_key_valid": key_valid,
                     "is_organization_name_valid": org_valid,
                     "is_entitled": bool(org_valid and orgs[org])}

    def _jwks(self) -> tuple[int, dict]:
        if self.jwks_delay:
            time.sleep(self.jwks_delay)
        if self.jwks_failure:
            return self.jwks_failure, {"error": "simulated outage"}
        return 200, self.jwks()

    # --- server ---

    @property
    def auth_url(self) -> str:
        return self.url + AUTH_PATH

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    def respond(self, request: Request):
        body = request.json
        with self._lock:
            self.calls.append({"method": request.method, "path": request.path, "body": body,
                               "authorization": request.headers.get("Authorization")})
        if (request.method, request.path) == ("POST", AUTH_PATH):
            return self._authenticate(request.headers, body)
        if (request.method, request.path) == ("GET", JWKS_PATH):
            return self._jwks()
        return 404, {"error": "not found"}
