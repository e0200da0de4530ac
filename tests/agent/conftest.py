"""Fixtures for the agent's unit and integration tests: this suite's own SeaweedFS, and a Config
built from a dict of environment variables (buckets and the IMDS stand-in come from
tests/conftest.py)."""

import pytest

from agent import config as agent_config
from tests.support.seaweed import seaweed_store


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """This suite's own store: see tests/support/seaweed.seaweed_store."""
    yield from seaweed_store(tmp_path_factory)


@pytest.fixture
def make_config(tmp_path, imds, monkeypatch):
    """make_config(**env) -> Config, with safe loopback defaults and the S3 settings of
    SeaweedFS when the test also asks for the `seaweed` fixture."""

    def build(seaweed=None, **env):
        base = {"KELPIE_API_URL": "http://127.0.0.1:9", "KELPIE_API_KEY": "k",
                "KELPIE_IMDS_URL": imds.url, "KELPIE_WORK_DIR": str(tmp_path),
                "KELPIE_STATE_FILE": str(tmp_path / "state.json"), "MAX_RETRIES": "2"}
        if seaweed is not None:
            base.update(seaweed.env)
            for name, value in seaweed.env.items():
                monkeypatch.setenv(name, value)  # botocore reads credentials from os.environ
        base.update({k: str(v) for k, v in env.items()})
        return agent_config.load(base)

    return build
