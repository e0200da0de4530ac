"""The API's settings: read from their one declaration, and documented as declared."""

import re
from pathlib import Path

import pytest

from api import config

README = Path(__file__).resolve().parents[2] / "README.md"
# Read by libraries, not by Settings, but documented in the same table.
NOT_SETTINGS = {"PROMETHEUS_MULTIPROC_DIR"}


def _readme_rows() -> list[tuple[list[str], str]]:
    section = README.read_text().split("### API configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return rows


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_readme_table_lists_every_setting_with_its_declared_default():
    declared = {item.metadata["env"]: item.default for item in config.environment_settings()}
    rows = _readme_rows()
    documented = {name for names, _ in rows for name in names}
    table_text = README.read_text().split("### API configuration", 1)[1].split("\n## ", 1)[0]
    assert [name for name in declared if name not in table_text] == []
    assert documented - set(declared) - NOT_SETTINGS == set()
    for names, default_cell in rows:
        shown = re.findall(r"`([^`]*)`", default_cell)
        for index, name in enumerate(names):
            if name in NOT_SETTINGS:
                continue
            if len(shown) == len(names):
                assert shown[index] == _shown(declared[name]), name
            else:  # described in words ("unset", "a quarter of the concurrency"): no value
                assert not declared[name], name


def test_every_declared_variable_is_read(monkeypatch):
    for item in config.environment_settings():
        monkeypatch.delenv(item.metadata["env"], raising=False)
    defaults = config.load()
    samples = {config.integer: "7", config.number: "7.5", config.boolean: "true",
               config.text: "http://127.0.0.1:9/x", config.days_or_forever: "2",
               config.host_list: "example.test", config.long_secret: "k" * 40}
    for item in config.environment_settings():
        monkeypatch.setenv(item.metadata["env"], samples[item.metadata["parse"]])
        assert getattr(config.load(), item.name) != getattr(defaults, item.name), item.name
        monkeypatch.delenv(item.metadata["env"])


@pytest.mark.parametrize("env, value, message", [
    ("KELPIE_DB_POOL_SIZE", "four", "must be an integer"),
    ("KELPIE_WEBHOOK_TIMEOUT_S", "soon", "must be a number"),
    ("KELPIE_ADMIN_KEY", "short", "at least 32 characters"),
])
def test_bad_value_stops_start_up_with_one_line(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit, match=message):
        config.load()


def test_empty_means_default_and_special_forms(monkeypatch):
    monkeypatch.setenv("KELPIE_DB_POOL_SIZE", "")
    monkeypatch.setenv("KELPIE_RETENTION_DAYS", "0")
    monkeypatch.setenv("KELPIE_WEBHOOK_ALLOWED_HOSTS", " [::1], LocalHost ,")
    settings = config.load()
    assert settings.db_pool_size == 4
    assert settings.retention_days is None
    assert settings.webhook_allowed_hosts == ("::1", "localhost")
