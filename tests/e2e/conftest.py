"""End-to-end fixtures: this suite's own SeaweedFS and one API server (SQLite) for the session, a
fresh user and container group per test, and agents started on demand (buckets and the IMDS
stand-in come from tests/conftest.py)."""

import os
import secrets

import pytest

from tests.e2e.harness import Agent, Jobs
from tests.support.api_process import ApiProcess
from tests.support.seaweed import seaweed_store


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """This suite's own store: see tests/support/seaweed.seaweed_store."""
    yield from seaweed_store(tmp_path_factory)


@pytest.fixture(scope="session")
def api(tmp_path_factory):
    directory = tmp_path_factory.mktemp("api")
    server = ApiProcess(f"sqlite:///{directory / 'kelpie.db'}", log_path=directory / "api.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def user_key(api):
    return api.create_user("e2e-" + secrets.token_hex(4))


@pytest.fixture
def group():
    return "group-" + secrets.token_hex(6)


@pytest.fixture
def jobs(api, user_key, group):
    return Jobs(api, user_key, group)


@pytest.fixture
def agents(tmp_path, api, seaweed, imds, user_key, group):
    """Factory: agents(machine_id="m1", **env_overrides) starts an agent; all are stopped at the
    end of the test."""
    started: list[Agent] = []

    def start(machine_id: str = "machine-a", **overrides) -> Agent:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KELPIE_"))},
            **seaweed.env,
            "KELPIE_API_URL": api.url,
            "KELPIE_API_KEY": user_key,
            "KELPIE_IMDS_URL": imds.url,
            "SALAD_MACHINE_ID": machine_id,
            "SALAD_CONTAINER_GROUP_ID": group,
            "HEARTBEAT_INTERVAL_S": "0.2",
            "MAX_RETRIES": "3",
            "KELPIE_SHUTDOWN_GRACE_S": "10",
            "KELPIE_KILL_GRACE_S": "3",
            "KELPIE_LOG_LEVEL": "INFO",
            # Relative to the agent's work dir, so legacy jobs never touch /kelpie.
            "INPUT_DIR": "inputs", "CHECKPOINT_DIR": "checkpoints", "OUTPUT_DIR": "outputs",
            "PYTHONUNBUFFERED": "1",
        }
        env.update({k: str(v) for k, v in overrides.items()})
        agent = Agent(tmp_path / f"{machine_id}-{len(started)}", env).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(timeout=15)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


