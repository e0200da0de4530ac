"""How long a machine holds a job after it was assigned or last heartbeated: the one rule that
the claim, the heartbeat and the reclaim of a stale job all use.

lease = max(2 × heartbeat_interval, heartbeat_interval + grace). Twice the interval alone is too
tight for short intervals: an agent spaces its heartbeats by the interval plus the request's
latency, so one slow answer under load cost a live holder its job. The grace gives every lease
at least that much slack; long intervals keep their 2 × interval.
"""

DEFAULT_GRACE_S = 15

_grace_s = DEFAULT_GRACE_S


def configure(grace_s: int) -> None:
    """Set the grace from the settings (KELPIE_LEASE_GRACE_S), once per process at start-up."""
    global _grace_s
    _grace_s = max(0, int(grace_s))


def seconds(heartbeat_interval: int) -> int:
    """The lease of a job with this heartbeat interval, in seconds."""
    return heartbeat_interval + max(heartbeat_interval, _grace_s)


def sql_seconds(dialect: str, interval_column: str = "heartbeat_interval") -> str:
    """The same rule as `seconds()`, as an SQL expression over the job's interval column, for
    statements that compute the lease of the row they update (the heartbeat)."""
    larger = "GREATEST" if dialect == "postgresql" else "max"
    return f"({interval_column} + {larger}({interval_column}, {_grace_s}))"
