"""The torture suite runs on the end-to-end fixtures: one API server for the session, a fresh
user and container group per test, agents started on demand; SeaweedFS and buckets come from
tests/conftest.py."""

from tests.e2e.conftest import agents, api, group, jobs, user_key

__all__ = ["agents", "api", "group", "jobs", "user_key"]
