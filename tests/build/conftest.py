"""Fixtures for the `kelpie` executable: the binary (built once per session) and empty roots to
run it in.

KELPIE_AGENT_BINARY names a binary already built (CI builds it once for tests/e2e and tests/build);
otherwise `build/build_agent.sh` runs, which reuses dist/kelpie when its inputs have not changed.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kelpie_binary() -> Path:
    given = os.environ.get("KELPIE_AGENT_BINARY")
    if given:
        path = Path(given)
        if not path.is_absolute():
            path = REPO_ROOT / path
        if not os.access(path, os.X_OK):
            pytest.fail(f"KELPIE_AGENT_BINARY={given} is not an executable file")
        return path
    result = subprocess.run(["bash", str(REPO_ROOT / "build" / "build_agent.sh")], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"build/build_agent.sh failed ({result.returncode}):\n{result.stdout[-5000:]}")
    return REPO_ROOT / "dist" / "kelpie"


class EmptyRoot:
    """A directory holding only the binary (as /kelpie), run with chroot.

    No libc, no loader, no Python, no certificates, no /etc and no /tmp: an image built FROM
    scratch has none of them (the binary makes /tmp itself when it is missing). Added are only
    the two things every container runtime puts into a container whatever its image holds:
    /proc (the binary finds itself through /proc/self/exe), mounted in a private mount
    namespace of the chrooted process so nothing stays mounted on the host whatever happens to
    the test, and the /dev/null device (the agent gives it to the job's command as stdin).
    """

    def __init__(self, path: Path, binary: Path):
        self.path = path
        (path / "proc").mkdir()
        (path / "dev").mkdir()
        os.mknod(path / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        shutil.copy2(binary, path / "kelpie")
        os.chmod(path / "kelpie", 0o755)

    def argv(self, *args: str, user: str | None = None) -> list[str]:
        # Absolute tool paths: the environment given to the binary has no PATH.
        as_user = [f"--userspec={user}"] if user else []
        return [shutil.which("unshare"), "--mount", f"--mount-proc={self.path / 'proc'}",
                shutil.which("chroot"), *as_user, str(self.path), *args]

    def run(self, *args: str, env: dict | None = None, timeout: float = 60,
            user: str | None = None, stdin: str | None = None):
        # The host's environment is not passed in: here it names CA files and tools that do
        # not exist inside the root, and a user's container would not have them either.
        return subprocess.run(self.argv(*args, user=user), env=env or {}, input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str, env: dict, log_path: Path) -> subprocess.Popen:
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            return subprocess.Popen(self.argv(*args), env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        finally:
            log.close()

    def leftovers_in_tmp(self, tmp: str = "tmp") -> list[str]:
        """What the executable's two unpack stages (staticx, PyInstaller) left in /tmp."""
        return sorted(name for name in os.listdir(self.path / tmp)
                      if name.startswith(("staticx-", "_MEI")))


@pytest.fixture
def empty_root(tmp_path, kelpie_binary) -> EmptyRoot:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux / coreutils) is not installed")
    root = tmp_path / "root"
    root.mkdir()
    return EmptyRoot(root, kelpie_binary)

