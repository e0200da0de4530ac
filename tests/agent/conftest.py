"""Fixtures for the agent's unit and integration tests: a loopback SeaweedFS for the session,
an IMDS stand-in, and a Config built from a dict of environment variables."""

import os
import secrets

import pytest

from agent import config as agent_config
from tests.support.imds import FakeImds
from tests.support.seaweed import SeaweedFS

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    store = SeaweedFS(data_dir=tmp_path_factory.mktemp("seaweed"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def bucket(seaweed):
    return seaweed.create_bucket("unit-" + secrets.token_hex(6))


@pytest.fixture
def imds():
    with FakeImds() as fake:
        yield fake


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
