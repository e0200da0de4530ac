"""Kelpie worker agent: polls the Kelpie API, runs jobs, keeps their checkpoints in S3."""
