"""The storage benchmark measures the agent as the environment configures it."""

import types

from agent.config import load
from bench import bench_storage


def test_the_agent_under_benchmark_reads_its_settings_from_the_environment(monkeypatch):
    store = types.SimpleNamespace(env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1",
                                       "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    monkeypatch.setenv("KELPIE_TRANSFER_CONCURRENCY", "7")
    monkeypatch.setenv("KELPIE_PART_CONCURRENCY", "3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://elsewhere.invalid")
    config = load(bench_storage._agent_env(store))
    assert (config.transfer_concurrency, config.part_concurrency) == (7, 3)
    assert config.s3_endpoint_url == "http://127.0.0.1:1"  # the benchmark's own store wins
    assert config.state_file is None
