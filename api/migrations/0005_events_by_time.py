"""The dashboard's fleet page reads the job events of the last hour and day
(api/fleet.py); without an index on the time that would scan every event ever written.
Numbered 0005: 0004 is taken by work in progress elsewhere, and the runner applies any
migration not yet recorded, whatever the order they arrive in."""


def up(dialect: str) -> list[str]:
    return ["CREATE INDEX job_events_at ON job_events (at)"]
