import subprocess
import sys

import pytest

from agent import config as agent_config
from agent.config import ConfigError, load


def test_defaults_and_aliases(tmp_path):
    config = load({"KELPIE_API_URL": "http://api.example/", "SALAD_ORGANIZATION_NAME": "org",
                   "SALAD_PROJECT_NAME": "proj", "AWS_DEFAULT_REGION": "eu-west-1",
                   "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "KELPIE_WORK_DIR": str(tmp_path),
                   "INPUT_DIR": "in"})
    assert config.api_url == "http://api.example"
    assert (config.salad_organization, config.salad_project) == ("org", "proj")
    assert config.s3_region == "eu-west-1"
    assert config.s3_endpoint_url == "http://127.0.0.1:1"
    assert config.input_dir == tmp_path / "in"
    # The original worker's defaults, outside /kelpie (where the documented image puts the binary).
    assert str(config.checkpoint_dir) == "/checkpoint"
    assert str(config.output_dir) == "/output"
    assert config.idle_poll_interval == 10 and config.max_job_failures == 3
    assert config.imds_url == "http://169.254.169.254"


def test_specific_s3_endpoint_wins():
    config = load({"KELPIE_API_URL": "http://a", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                   "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2"})
    assert config.s3_endpoint_url == "http://127.0.0.1:2"


@pytest.mark.parametrize("env, message", [
    ({}, "KELPIE_API_URL is required"),
    ({"KELPIE_API_URL": "ftp://x"}, "not an http(s) URL"),
    ({"KELPIE_API_URL": "http://a", "HEARTBEAT_INTERVAL_S": "soon"}, "not a float"),
    ({"KELPIE_API_URL": "http://a", "MAX_RETRIES": "0"}, "at least 1"),
    ({"KELPIE_API_URL": "http://a", "KELPIE_RECREATE_BETWEEN_JOBS": "maybe"}, "boolean"),
    ({"KELPIE_API_URL": "http://a", "SALAD_API_KEY": "s"}, "SALAD_API_KEY needs SALAD_PROJECT"),
    ({"KELPIE_API_URL": "http://a", "KELPIE_LOG_LEVEL": "LOUD"}, "KELPIE_LOG_LEVEL"),
])
def test_bad_configuration_is_one_clear_error(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(env)


def test_cli_exits_non_zero_with_one_line_before_polling():
    result = subprocess.run([sys.executable, "-m", "agent"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "KELPIE_API_URL": "nonsense"},
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "KELPIE_API_URL" in result.stderr


def test_cli_version_and_help_list_every_variable():
    from agent.version import __version__

    version = subprocess.run([sys.executable, "-m", "agent", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.strip() == __version__
    help_text = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    for setting in agent_config.SETTINGS:
        for name in setting.names:
            assert name in help_text
    for required in ("KELPIE_API_URL", "KELPIE_API_KEY", "SALAD_API_KEY", "SALAD_ORGANIZATION",
                     "SALAD_PROJECT_NAME", "SALAD_MACHINE_ID", "SALAD_CONTAINER_GROUP_ID",
                     "HEARTBEAT_INTERVAL_S", "MAX_RETRIES", "MAX_JOB_FAILURES",
                     "MAX_TIME_WITH_NO_WORK_S", "KELPIE_RECREATE_BETWEEN_JOBS",
                     "KELPIE_STATE_FILE", "KELPIE_LOG_LEVEL", "KELPIE_SHUTDOWN_GRACE_S",
                     "INPUT_DIR", "CHECKPOINT_DIR", "OUTPUT_DIR", "AWS_ENDPOINT_URL_S3",
                     "AWS_REGION", "AWS_CA_BUNDLE", "KELPIE_IMDS_URL"):
        assert required in help_text


def test_readme_table_is_written_from_the_declarations():
    from pathlib import Path

    from tests.agent.settings_table import table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert table() in readme, "regenerate with: python -m tests.agent.settings_table"


def test_every_setting_is_read_by_load(tmp_path):
    """Each declared variable changes the loaded Config: none is declared but ignored."""
    base = {"KELPIE_API_URL": "http://a", "KELPIE_WORK_DIR": str(tmp_path)}
    defaults = load(base)
    (tmp_path / "ca.pem").write_text("x")
    samples = {"KELPIE_API_URL": "http://b", "KELPIE_LOG_LEVEL": "debug",
               "FILE_WATCHER_MODE": "poll", "KELPIE_S3_ADDRESSING_STYLE": "path",
               "KELPIE_WORK_DIR": str(tmp_path / "w"), "AWS_CA_BUNDLE": str(tmp_path / "ca.pem"),
               "KELPIE_IMDS_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8",
               "AWS_ENDPOINT_URL": "http://127.0.0.1:7",
               "KELPIE_RECREATE_BETWEEN_JOBS": "true", "KELPIE_FAST_SMALL_TRANSFERS": "false",
               "KELPIE_STATE_FILE": ""}
    for setting in agent_config.SETTINGS:
        if setting in agent_config.BOTOCORE_SETTINGS:
            continue
        for name in setting.names:
            value = samples.get(name, "77" if setting.default and setting.default[0].isdigit()
                                else "some-value")
            extra = {"SALAD_PROJECT_NAME": "p"} if name == "SALAD_API_KEY" else {}
            loaded = load({**base, **extra, name: value})
            assert loaded != defaults, f"{name} is declared but load() ignores it"
