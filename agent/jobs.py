"""A job as the agent runs it: the sync rules (legacy fields mapped onto them), the child's
environment, and the directories to purge afterwards."""

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config
from agent.log import get_logger
from agent.paths import SyncRule

log = get_logger(__name__)


class JobError(ValueError):
    """The job definition cannot be run as given (reported as a failed attempt)."""


@dataclass
class JobPlan:
    job_id: str
    command: str
    arguments: list[str]
    environment: dict[str, str]
    heartbeat_interval: float
    before: list[SyncRule] = field(default_factory=list)
    during: list[SyncRule] = field(default_factory=list)
    after: list[SyncRule] = field(default_factory=list)

    def directories(self) -> list[Path]:
        seen = []
        for rule in self.before + self.during + self.after:
            if rule.local_dir not in seen:
                seen.append(rule.local_dir)
        return seen


def _prefix(value) -> str:
    prefix = str(value or "")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _rule(entry: dict, config: Config, compression: bool, where: str) -> SyncRule:
    try:
        bucket = entry["bucket"]
        local_path = entry["local_path"]
    except (KeyError, TypeError):
        raise JobError(f"{where} needs bucket and local_path") from None
    pattern = entry.get("pattern")
    try:
        compiled = re.compile(pattern) if pattern else None
    except re.error as error:
        raise JobError(f"{where}.pattern {pattern!r} is not a regular expression: {error}") from None
    local_dir = Path(os.path.normpath(config.work_dir / os.path.expanduser(local_path)))
    return SyncRule(bucket=bucket, prefix=_prefix(entry.get("prefix")), local_dir=local_dir,
                    pattern=compiled, compression=compression)


def plan_for(job: dict, config: Config) -> JobPlan:
    compression = bool(job.get("compression"))
    interval = job.get("heartbeat_interval") or 30
    plan = JobPlan(
        job_id=job["id"], command=job.get("command") or "",
        arguments=[str(a) for a in job.get("arguments") or []],
        environment={str(k): str(v) for k, v in (job.get("environment") or {}).items()},
        heartbeat_interval=float(interval),
    )
    if not plan.command:
        raise JobError("the job has no command")
    sync = job.get("sync")
    if sync:
        for stage in ("before", "during", "after"):
            rules = [_rule(entry, config, compression, f"sync.{stage}[{i}]")
                     for i, entry in enumerate(sync.get(stage) or [])]
            setattr(plan, stage, rules)
        return plan

    # Legacy: input and checkpoint come down; checkpoints and outputs go up as they appear,
    # and outputs once more at the end.
    def legacy(kind: str, local_dir: Path) -> SyncRule | None:
        bucket = job.get(f"{kind}_bucket")
        if not bucket:
            return None
        return SyncRule(bucket=bucket, prefix=_prefix(job.get(f"{kind}_prefix")),
                        local_dir=local_dir, compression=compression)

    inputs = legacy("input", config.input_dir)
    checkpoints = legacy("checkpoint", config.checkpoint_dir)
    outputs = legacy("output", config.output_dir)
    plan.before = [r for r in (inputs, checkpoints) if r]
    plan.during = [r for r in (checkpoints, outputs) if r]
    plan.after = [r for r in (outputs,) if r]
    return plan


def child_environment(plan: JobPlan, config: Config) -> dict[str, str]:
    env = dict(os.environ)
    env.update(plan.environment)
    env.update({
        "INPUT_DIR": str(config.input_dir),
        "CHECKPOINT_DIR": str(config.checkpoint_dir),
        "OUTPUT_DIR": str(config.output_dir),
        "KELPIE_JOB_ID": plan.job_id,
    })
    return env


def _too_dangerous_to_purge(directory: Path, config: Config) -> bool:
    real = Path(os.path.realpath(directory))
    protected = {Path("/")}
    try:
        protected.add(Path(os.path.realpath(Path.home())))
    except RuntimeError:  # no HOME and no passwd entry (a bare container): nothing to protect
        pass
    work = Path(os.path.realpath(config.work_dir))
    return real in protected or real == work or real in work.parents


def purge(directories: list[Path], config: Config) -> None:
    """Empty each directory (it stays, empty) so the next job starts clean."""
    for directory in directories:
        if not directory.is_dir():
            continue
        if _too_dangerous_to_purge(directory, config):
            log.warning("not purging a directory that holds the agent's working directory",
                        extra={"path": str(directory)})
            continue
        for entry in directory.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as error:
                log.warning("could not purge", extra={"path": str(entry), "error": str(error)})
