"""Attempt accounting (issue 11): how many lost leases a job survives (`max_interruptions`),
how many it has had (`num_interruptions`), and the wall-clock limit of one attempt
(`timeout_s`, NULL = none). Existing jobs get the generous default and no limit."""


def up(dialect: str) -> list[str]:
    return [
        "ALTER TABLE jobs ADD COLUMN max_interruptions INTEGER NOT NULL DEFAULT 100",
        "ALTER TABLE jobs ADD COLUMN num_interruptions INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN timeout_s INTEGER",
    ]
