"""The state file holds the job, environment (secrets) included: private from its first byte,
and written by one writer at a time so it is never torn or missing (agent/state.py).

Before, it was written at the process umask (0644 on most images: readable by every user of
the node) through one temp name, `.name.<pid>.tmp`, that the writer thread and close() shared.
"""

import json
import os
import random
import stat
import threading

import pytest

from agent import state as state_module
from agent.state import StateFile

SECRET_JOB = {"id": "j1", "command": "train", "environment": {"HF_TOKEN": "hf_secret"}}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual default: files 0644 unless created otherwise
    yield
    os.umask(old)


def test_the_file_and_its_temporary_are_private_from_the_first_byte(tmp_path, monkeypatch,
                                                                    umask_022):
    path = tmp_path / "run" / "state.json"
    seen = []
    real_replace = os.replace

    def checked_replace(source, target):
        # The temporary file is complete here and about to become the state file.
        seen.append((os.fspath(source), mode(source), os.path.getsize(source)))
        real_replace(source, target)

    monkeypatch.setattr(state_module.os, "replace", checked_replace)
    state = StateFile(path, "machine-a")
    state.update(status="running", job_id="j1", job=SECRET_JOB)
    state.close()

    assert seen and all(file_mode == 0o600 for _, file_mode, _ in seen), seen
    assert mode(path) == 0o600
    assert json.loads(path.read_text())["job"]["environment"] == {"HF_TOKEN": "hf_secret"}
    # Every write used a name of its own.
    assert len({name for name, _, _ in seen}) == len(seen)


def test_a_state_file_left_readable_by_an_older_agent_becomes_private(tmp_path, umask_022):
    path = tmp_path / "state.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    state = StateFile(path, "machine-a")
    state.update(job=SECRET_JOB)
    state.close()
    assert mode(path) == 0o600


@pytest.mark.timeout(120)
def test_concurrent_updates_and_close_never_tear_or_lose_the_file(tmp_path, monkeypatch):
    seed = random.randrange(2**32)
    print(f"state file race seed: {seed}")
    rng = random.Random(seed)
    monkeypatch.setattr(state_module, "WRITE_EVERY_S", 0.0)  # the writer thread as busy as can be
    path = tmp_path / "state.json"
    state = StateFile(path, "machine-a")
    state.update(status="running", job=SECRET_JOB)
    state.flush()
    problems = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                json.loads(path.read_text())
            except FileNotFoundError:
                problems.append("missing")
            except ValueError as error:
                problems.append(f"torn: {error}")

    def writer(number: int):
        for i in range(150):
            # Large enough that a write takes more than one system call.
            state.update(**{f"field_{number}": "x" * rng.randrange(1, 200_000), "step": i})
            state.started("upload", "bucket", f"key-{number}-{i}", i)
            if i % 3 == 0:
                state.flush()
            state.finished("upload", "bucket", f"key-{number}-{i}")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    state.update(status="stopped")
    state.close()
    done.set()
    for thread in readers:
        thread.join()

    assert problems == [], f"seed {seed}: {problems[:5]}"
    final = json.loads(path.read_text())
    assert final["status"] == "stopped" and final["uploads"] == {}  # the newest state won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp left over
    assert mode(path) == 0o600
