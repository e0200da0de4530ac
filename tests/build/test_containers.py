"""The Dockerfile story with a real container engine: the example images in examples/ built with
podman, the binary ADDed from a URL (a loopback HTTP server stands in for the release page),
each run against the API and SeaweedFS on 127.0.0.1 until a job completes.

- examples/scratch.Dockerfile: FROM scratch, so no shell, no C library and no /tmp.
- examples/Dockerfile: FROM a small image with a shell, made here from Debian's static busybox
  (no image registry is reachable), running a legacy job in /input, /checkpoint and /output.

podman and runc come from Debian (build/container_tools.sh installs them). These tests skip,
with the reason, only when this machine cannot run a container at all; with
KELPIE_REQUIRE_CONTAINERS=1 (CI sets it) that is a failure instead.
"""

import functools
import http.server
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from agent.version import __version__
from tests.support import postgres
from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.net import wait_for_http, wait_until
from tests.support.seaweed import SeaweedFS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
MiB = 1024 * 1024
# What `podman run` needs on this kind of machine; --network=host reaches the API on loopback.
RUN_OPTIONS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network=host"]


class Podman:
    def __init__(self, tag_prefix: str):
        self.tag_prefix = tag_prefix
        self.images: list[str] = []

    def __call__(self, *args: str, timeout: float = 300, check: bool = True):
        result = subprocess.run(["podman", "--runtime=runc", *args], capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:2])} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def tag(self, name: str) -> str:
        tag = f"{self.tag_prefix}-{name}:test"
        self.images.append(tag)
        return tag

    def build(self, name: str, containerfile: Path, context: Path, **build_args: str) -> str:
        tag = self.tag(name)
        args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
        # --pull=never: every base is local (scratch, or made here); nothing may be fetched.
        self("build", "--pull=never", "--network=host", "-f", str(containerfile), "-t", tag,
             *args, str(context))
        return tag

    def cleanup(self) -> None:
        if self.images:
            self("rmi", "-f", *self.images, check=False)


def _cannot_run_containers(reason: str):
    if os.environ.get("KELPIE_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"KELPIE_REQUIRE_CONTAINERS=1 but {reason}")
    pytest.skip(reason)


def busybox_rootfs(directory: Path) -> Path:
    """A root file system tarball holding Debian's static busybox as /bin/sh and friends, and
    the directories a Linux system has (so the image has a shell and a /tmp, unlike scratch)."""
    busybox = Path("/bin/busybox")
    tarball = directory / "busybox-rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        for name in ("bin", "tmp", "etc", "root"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in ("sh", "ls", "cp", "cat", "echo", "mkdir", "stat", "true", "env"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return tarball


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    if shutil.which("podman") is None or shutil.which("runc") is None:
        _cannot_run_containers("podman and runc are not installed "
                               "(bash build/container_tools.sh installs them)")
    if not Path("/bin/busybox").is_file():
        _cannot_run_containers("Debian's busybox-static is not installed "
                               "(bash build/container_tools.sh installs it)")
    engine = Podman("localhost/kelpie-" + secrets.token_hex(4))
    base = engine.tag("busybox")
    engine("import", "--change", 'CMD ["/bin/sh"]',
           str(busybox_rootfs(tmp_path_factory.mktemp("rootfs"))), base)
    probe = engine("run", "--rm", *RUN_OPTIONS, base, "/bin/true", check=False, timeout=120)
    if probe.returncode != 0:
        engine.cleanup()
        _cannot_run_containers(f"this machine cannot run a container with podman: "
                               f"{probe.stderr.strip()[-500:]}")
    engine.base = base
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def release_url(kelpie_binary, tmp_path_factory):
    """The binary served on loopback, standing in for the GitHub release download URL."""
    directory = tmp_path_factory.mktemp("release")
    shutil.copy(kelpie_binary, directory / "kelpie")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/kelpie"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """SeaweedFS, the IMDS stand-in and the API on loopback, shared by this module's tests."""
    directory = tmp_path_factory.mktemp("stack")
    with SeaweedFS(buckets=("containers",)) as s3, \
            FakeImds() as imds, \
            ApiProcess(f"sqlite:///{directory}/kelpie.db", log_path=directory / "api.log") as api:
        yield s3, imds, api


def run_until_completed(podman: Podman, image: str, stack, job: dict, group: str) -> tuple:
    """Runs `image` as the agent for one job; returns (final job, container exit code, logs)."""
    s3, imds, api = stack
    key = api.create_user("containers-" + group)
    status, created = api.request("POST", "/jobs", {**job, "container_group_id": group},
                                  key=key)
    assert status == 202, created
    name = f"kelpie-test-{secrets.token_hex(4)}"
    env = {"KELPIE_API_URL": api.url, "KELPIE_API_KEY": key, "SALAD_MACHINE_ID": name,
           "SALAD_CONTAINER_GROUP_ID": group, "KELPIE_IMDS_URL": imds.url,
           "HEARTBEAT_INTERVAL_S": "0.2", **s3.env}
    env_args = [f"--env={k}={v}" for k, v in env.items()]
    podman("run", "-d", "--name", name, *RUN_OPTIONS, *env_args, image)
    try:
        def final():
            body = api.request("GET", f"/jobs/{created['id']}", key=key)[1]
            if body["status"] in ("completed", "failed", "canceled") or body["num_failures"]:
                return body
            state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            if state != "true":
                raise AssertionError("the container stopped:\n" + podman("logs", name).stderr)
            return None
        done = wait_until(final, timeout=120, interval=0.3)
        # `docker stop`: SIGTERM through both unpack stages to the agent, which exits 0.
        podman("stop", "-t", "30", name)
        exit_code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
        logs = podman("logs", name)
        return done, exit_code, logs.stdout + logs.stderr
    finally:
        podman("rm", "-f", name, check=False)


def test_from_scratch_image_runs_a_whole_job(podman, release_url, stack):
    """The mission's first use: `FROM scratch` + `ADD --chmod=755 <release URL> /kelpie`. No
    shell, no libc, no /tmp; the job's command is the only program there, kelpie itself."""
    image = podman.build("scratch", EXAMPLES / "scratch.Dockerfile", EXAMPLES,
                         KELPIE_URL=release_url)
    s3, _, _ = stack
    storage = s3.client()
    inputs = {"a.txt": b"hello from the bucket\n", "deep/b.bin": os.urandom(6 * MiB)}
    for name, data in inputs.items():
        storage.put_object(Bucket="containers", Key=f"scratch/inputs/{name}", Body=data)
    job = {"command": "/kelpie", "arguments": ["--version"], "heartbeat_interval": 1,
           "sync": {
               "before": [{"bucket": "containers", "prefix": "scratch/inputs/",
                           "local_path": "/data/", "direction": "download"}],
               "after": [{"bucket": "containers", "prefix": "scratch/outputs/",
                          "local_path": "/data/", "direction": "upload"}]}}
    done, exit_code, logs = run_until_completed(podman, image, stack, job, "scratch")
    assert done["status"] == "completed", logs
    for name, data in inputs.items():
        got = storage.get_object(Bucket="containers", Key=f"scratch/outputs/{name}")
        assert got["Body"].read() == data, name
    assert __version__ in logs.splitlines()  # the job's own output
    assert exit_code == 0, logs


def test_image_with_a_shell_runs_a_legacy_job_in_the_original_directories(podman, release_url,
                                                                          stack):
    """examples/Dockerfile on a busybox base: a legacy job (the six bucket and prefix fields)
    gets its inputs in /input and its outputs taken from /output, the original worker's
    directories, beside /kelpie rather than under it."""
    image = podman.build("shell", EXAMPLES / "Dockerfile", EXAMPLES, BASE_IMAGE=podman.base,
                         KELPIE_URL=release_url)
    s3, _, _ = stack
    storage = s3.client()
    storage.put_object(Bucket="containers", Key="legacy/in/data.csv", Body=b"id,label\n1,fox\n")
    job = {"command": "sh", "arguments": [
        "-c", 'cp "$INPUT_DIR"/data.csv "$OUTPUT_DIR"/ && '
              'echo "$INPUT_DIR $CHECKPOINT_DIR $OUTPUT_DIR" > "$OUTPUT_DIR"/dirs.txt'],
           "heartbeat_interval": 1,
           "input_bucket": "containers", "input_prefix": "legacy/in/",
           "checkpoint_bucket": "containers", "checkpoint_prefix": "legacy/ckpt/",
           "output_bucket": "containers", "output_prefix": "legacy/out/"}
    done, exit_code, logs = run_until_completed(podman, image, stack, job, "shell")
    assert done["status"] == "completed", logs
    read = lambda key: storage.get_object(Bucket="containers", Key=key)["Body"].read()  # noqa: E731
    assert read("legacy/out/data.csv") == b"id,label\n1,fox\n"
    assert read("legacy/out/dirs.txt") == b"/input /checkpoint /output\n"
    assert exit_code == 0, logs


def test_add_from_a_url_without_chmod_is_not_executable(podman, release_url, tmp_path):
    """Why the examples say `ADD --chmod=755`: ADD from a URL writes mode 0600."""
    (tmp_path / "Containerfile").write_text(
        f"FROM {podman.base}\nADD {release_url} /kelpie\n")
    image = podman.build("plain-add", tmp_path / "Containerfile", tmp_path)
    result = podman("run", "--rm", *RUN_OPTIONS, image, "stat", "-c", "%a", "/kelpie")
    assert result.stdout.strip() == "600"


@pytest.mark.api_image
def test_api_image_on_postgresql_serves_the_scratch_agent(podman, release_url, stack):
    """build/api.Dockerfile, FROM a Python base made here from Debian's packages
    (build/python_base_image.sh: no image registry is reachable), migrates a PostgreSQL
    database on loopback at start and serves the agent in the scratch image until its job
    completes: both halves of Kelpie in containers. (`make test-api-image`; CI runs it.)"""
    base = subprocess.run(["bash", str(REPO_ROOT / "build" / "python_base_image.sh")],
                          capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr[-3000:]
    image = podman.build("api", REPO_ROOT / "build" / "api.Dockerfile", REPO_ROOT,
                         PYTHON_IMAGE=base.stdout.strip().splitlines()[-1])
    agent_image = podman.build("scratch", EXAMPLES / "scratch.Dockerfile", EXAMPLES,
                               KELPIE_URL=release_url)
    s3, imds, _ = stack
    database, database_url = postgres.create_database("api_image")
    api = ApiProcess(database_url)  # not started: its client speaks to the container
    name = f"kelpie-test-api-{secrets.token_hex(4)}"
    env = {"DATABASE_URL": database_url, "KELPIE_ADMIN_KEY": api.admin_key,
           "KELPIE_API_PORT": str(api.port), "KELPIE_API_WORKERS": "1",
           # As tests/support/api_process.py: Salad's services on a closed loopback port.
           "KELPIE_SALAD_API_URL": "http://127.0.0.1:9/api/public",
           "KELPIE_SALAD_AUTH_URL": "http://127.0.0.1:9/auth",
           "KELPIE_SALAD_JWKS_URL": "http://127.0.0.1:9/jwks.json"}
    try:
        podman("run", "-d", "--name", name, *RUN_OPTIONS,
               *[f"--env={k}={v}" for k, v in env.items()], image)
        try:
            wait_for_http(api.url + "/healthz", timeout=120)
        except TimeoutError:
            pytest.fail("the API container never answered:\n" + podman("logs", name).stderr)
        done, exit_code, logs = run_until_completed(
            podman, agent_image, (s3, imds, api), {
                "command": "/kelpie", "arguments": ["--version"],
                "sync": {"after": [{"bucket": "containers", "prefix": "api-image/",
                                    "local_path": "/tmp/out/", "direction": "upload"}]}},
            "api-image")
        assert done["status"] == "completed", logs
        assert exit_code == 0, logs
        podman("stop", "-t", "30", name)
        api_logs = podman("logs", name)
        assert "database" in api_logs.stdout + api_logs.stderr  # the migration step ran
    finally:
        podman("rm", "-f", name, check=False)
        postgres.drop_database(database)
