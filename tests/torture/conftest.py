"""The torture suite runs on the end-to-end fixtures: one SeaweedFS and one API server for the
session, a fresh user, bucket and container group per test, agents started on demand."""

from tests.e2e.conftest import agents, api, bucket, group, imds, jobs, s3, seaweed, user_key

__all__ = ["agents", "api", "bucket", "group", "imds", "jobs", "s3", "seaweed", "user_key"]
