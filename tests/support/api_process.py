"""The coordination API as a real process on loopback, for end-to-end tests and benchmarks."""

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.net import free_port, wait_for_http
from tests.support.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]


class ApiProcess:
    """`python -m api serve` on 127.0.0.1, started and stopped by the test.

    The port stays the same across stop()/start(), so a test can take the API away from running
    agents and bring it back.
    """

    def __init__(self, database_url: str, *, port: int | None = None, workers: int = 1,
                 env: dict | None = None, log_path: Path | None = None):
        self.database_url = database_url
        self.port = port or free_port()
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "admin-" + secrets.token_hex(16)
        self.extra_env = env or {}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict:
        """The server's environment: the test's own with loopback-only settings on top."""
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KELPIE_ADMIN_KEY": self.admin_key,
            "AWS_EC2_METADATA_DISABLED": "true",
            # Tests never send webhooks anywhere but loopback, whatever URL a job (or the
            # fuzzer) gives; a test of the address checks themselves overrides this.
            "KELPIE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost",
            # Salad's services default to their real addresses; point them at a closed loopback
            # port so no test can leave the machine. Tests of them pass their stand-ins.
            "KELPIE_SALAD_API_URL": "http://127.0.0.1:9/api/public",
            "KELPIE_SALAD_AUTH_URL": "http://127.0.0.1:9/auth",
            "KELPIE_SALAD_JWKS_URL": "http://127.0.0.1:9/jwks.json",
            # Every test calls from 127.0.0.1 and many refuse credentials on purpose: the
            # failed-authentication throttle is off unless a test of it turns it on.
            "KELPIE_AUTH_FAILURE_BURST": "0",
            # Leases of exactly 2 × heartbeat_interval, so the many tests that wait for a lost
            # lease (interval 1 s) wait 2 s, not 16; the grace has its own tests that set it.
            "KELPIE_LEASE_GRACE_S": "0",
            **self.extra_env,
        }

    def prepare_database(self) -> None:
        """What `serve` does before it listens (migrations, the administrator key), alone: after
        it, several servers on this database can start at the same time without racing."""
        subprocess.run([sys.executable, "-m", "api", "migrate"], cwd=REPO_ROOT,
                       env=self.environment(), check=True, timeout=60)

    def start(self) -> "ApiProcess":
        # The child keeps its own copy of the descriptor; ours is closed right after Popen.
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            cwd=REPO_ROOT, env=self.environment(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.log_path:
            out.close()
        wait_for_http(self.url + "/healthz", timeout=60, process=self.process)
        return self

    def stop(self) -> None:
        # The whole session: Sanic's worker processes go with the main one.
        stop_process(self.process, group=True)

    def request(self, method: str, path: str, body=None, key: str | None = None,
                headers: dict | None = None):
        """One JSON request; returns (status, decoded body or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("X-Kelpie-Key", key or self.admin_key)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, (json.loads(raw) if raw else None)

    def create_user(self, name: str, org: str | None = None, project: str | None = None) -> str:
        """A new Kelpie user; returns its API key."""
        status, body = self.request("POST", "/users",
                                    {"name": name, "org": org, "project": project})
        assert status == 201, (status, body)
        return body["token"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

