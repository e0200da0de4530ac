"""The node's identity with the instance token as its credential (agent/identity.py): taken
from the token's claims; a contradicting explicit setting, or no credential at all, is a
start-up error. The whole agent is run for the start-up errors: one line, non-zero."""

import subprocess
import sys
from pathlib import Path

import pytest

from agent import identity
from agent.imds import Imds
from tests.support.salad_identity import unsigned_token, worker_claims

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_KEYS = {"KELPIE_API_KEY": "", "SALAD_API_KEY": "", "SALAD_PROJECT": "p"}


def _token(imds, **claims) -> None:
    imds.jwt = unsigned_token(worker_claims("acme", **claims))


def test_machine_and_group_come_from_the_token(make_config, imds):
    _token(imds, machine_id="m-token", container_group_id="cg-token")
    config = make_config(**NO_KEYS, SALAD_MACHINE_ID="", SALAD_CONTAINER_GROUP_ID="")
    resolved = identity.resolve(config, Imds(imds.url))
    assert (resolved.machine_id, resolved.container_group_id) == ("m-token", "cg-token")


def test_settings_that_agree_with_the_token_are_fine(make_config, imds):
    _token(imds, machine_id="m-1", container_group_id="cg-1")
    config = make_config(**NO_KEYS, SALAD_MACHINE_ID="m-1", SALAD_CONTAINER_GROUP_ID="cg-1")
    assert identity.resolve(config, Imds(imds.url)).machine_id == "m-1"


@pytest.mark.parametrize("setting", ["SALAD_MACHINE_ID", "SALAD_CONTAINER_GROUP_ID"])
def test_a_setting_that_contradicts_the_token_is_an_error(make_config, imds, setting):
    _token(imds, machine_id="m-1", container_group_id="cg-1")
    config = make_config(**NO_KEYS, **{setting: "someone-else"})
    with pytest.raises(identity.IdentityError, match=f"{setting}='someone-else' contradicts"):
        identity.resolve(config, Imds(imds.url))


def test_a_key_leaves_the_configured_identity_alone(make_config, imds):
    _token(imds, machine_id="m-token")
    config = make_config(KELPIE_API_KEY="k", SALAD_MACHINE_ID="m-configured")
    assert identity.resolve(config, Imds(imds.url)).machine_id == "m-configured"


def _run_agent(env: dict, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={
                              "PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
                              "KELPIE_API_URL": "http://127.0.0.1:9", "MAX_RETRIES": "2",
                              "KELPIE_WORK_DIR": str(tmp_path),
                              "KELPIE_STATE_FILE": str(tmp_path / "state.json"),
                              "PYTHONPATH": str(REPO_ROOT), **env})


def test_the_agent_refuses_to_start_on_a_contradiction(imds, tmp_path):
    _token(imds, machine_id="m-1", container_group_id="cg-1")
    run = _run_agent({**NO_KEYS, "KELPIE_IMDS_URL": imds.url, "SALAD_MACHINE_ID": "m-2"},
                     tmp_path)
    assert run.returncode == 3
    lines = run.stderr.strip().splitlines()
    assert lines == ["kelpie: cannot start: SALAD_MACHINE_ID='m-2' contradicts the instance "
                     "token, which names salad_machine_id='m-1'"], run.stderr


def test_the_agent_refuses_to_start_without_any_credential(imds, tmp_path):
    imds.add_route("GET", "/v1/token", lambda body: (503, {"error": "no token here"}))
    run = _run_agent({**NO_KEYS, "KELPIE_IMDS_URL": imds.url}, tmp_path)
    assert run.returncode == 3
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "kelpie: cannot start: no usable credentials"), run.stderr
