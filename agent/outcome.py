"""How one attempt at a job ended: the one value `Worker._attempt` returns and
`Worker._settle` reports. Every way an attempt can end is one of these four."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Completed:
    """The command exited 0 and every output is in the bucket."""


@dataclass(frozen=True)
class Failed:
    """The attempt failed. kind "job": the job's own fault (non-zero exit, timeout, a bad
    spec), charged to its max_failures. kind "node": this machine could not run it (storage,
    disk, work directory); the job goes back uncharged and this node counts it."""

    reason: str
    exit_code: int | None = None
    kind: str = "job"


@dataclass(frozen=True)
class Lost:
    """Canceled, or handed to another machine: nothing to report, `status` says why."""

    status: str | None


@dataclass(frozen=True)
class ShuttingDown:
    """The agent was told to stop: the job is left for another machine, nothing reported."""


Outcome = Completed | Failed | Lost | ShuttingDown
