"""A job as the agent runs it: the sync rules (legacy fields mapped onto them), the child's
environment, and its directories: judged and prepared before it runs, cleaned after.

What the agent deletes is only what Kelpie or the job put there: a directory it created for the
job is emptied; in a directory that already existed (data baked into the image) it removes the
files it downloaded and the files that appeared during the run, and keeps (and logs) the rest.
"""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config
from agent.log import get_logger
from agent.paths import SyncRule, UnsafeLocalPath, resolve_local_path, system_directory_problem
from agent.pattern import PatternRefused, compile_pattern

log = get_logger(__name__)


class JobError(ValueError):
    """The job definition cannot be run as given (reported as a failed attempt)."""


@dataclass
class JobPlan:
    job_id: str
    command: str
    arguments: list[str]
    environment: dict[str, str]
    timeout_s: float | None = None  # wall-clock limit of one attempt, from the claim
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
        compiled = compile_pattern(pattern) if pattern else None
    except PatternRefused as error:
        raise JobError(f"{where}.pattern {pattern!r} {error.reason}") from None
    try:
        local_dir = resolve_local_path(local_path, config.work_dir)
    except UnsafeLocalPath as error:
        raise JobError(f"{where}.local_path {local_path!r} {error}") from None
    except RuntimeError:  # "~/x" on a node with no HOME and no passwd entry
        raise JobError(f"{where}.local_path {local_path!r} names a home directory, and this "
                       "node has none") from None
    return SyncRule(bucket=bucket, prefix=_prefix(entry.get("prefix")), local_dir=local_dir,
                    pattern=compiled, compression=compression)


def _timeout(value) -> float | None:
    """The job's `timeout_s`: None (no limit) unless a positive number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def plan_for(job: dict, config: Config) -> JobPlan:
    compression = bool(job.get("compression"))
    plan = JobPlan(
        job_id=job["id"], command=job.get("command") or "",
        arguments=[str(a) for a in job.get("arguments") or []],
        environment={str(k): str(v) for k, v in (job.get("environment") or {}).items()},
        timeout_s=_timeout(job.get("timeout_s")),
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


def _protected(real: str, config: Config) -> bool:
    """`/`, the home directory, the work directory and the directories above it: never cleaned,
    whatever a job names (the work directory is the command's own working directory, and the
    agent's state file may live there)."""
    protected = {"/"}
    try:
        protected.add(os.path.realpath(Path.home()))
    except RuntimeError:  # no HOME and no passwd entry (a bare container): nothing to protect
        pass
    work = os.path.realpath(config.work_dir)
    return real in protected or real == work or work.startswith(real.rstrip("/") + "/")


def _contents(directory: Path) -> set[str]:
    """Every entry under directory (files, directories, symlinks, not followed), relative."""
    found = set()
    for top, dirnames, filenames in os.walk(directory):
        base = Path(top).relative_to(directory)
        for name in dirnames + filenames:
            found.add((base / name).as_posix())
    return found


@dataclass
class _JobDirectory:
    path: Path  # as the plan names it
    real: str  # its real path when prepared: a directory swapped for a symlink is not cleaned
    created: bool  # made for this job, so everything in it is the job's
    before: set[str]  # what an existing directory held before the job (kept afterwards)
    protected: bool


class JobDirectories:
    """The job's directories as they were before it ran, and how to clean up after it: a
    directory made for the job is emptied; in one that existed (data baked into the image),
    only the files the agent downloaded and the files that appeared during the run go."""

    def __init__(self, directories: list[_JobDirectory]):
        self.directories = directories
        self.downloaded: set[Path] = set()

    def record_downloaded(self, paths) -> None:
        """Files the download step wrote: removed afterwards even where a file of the same
        name was there before (the download replaced it)."""
        self.downloaded.update(Path(path) for path in paths)

    def clean(self) -> None:
        # Deepest first, so a directory nested in another is judged by its own record.
        for directory in sorted(self.directories, key=lambda d: len(d.path.parts), reverse=True):
            try:
                self._clean_one(directory)
            except OSError as error:
                log.warning("could not clean a job directory",
                            extra={"path": str(directory.path), "error": str(error)})

    def _clean_one(self, directory: _JobDirectory) -> None:
        if directory.protected:
            log.warning("not cleaning a directory that holds the agent's working directory, "
                        "the home directory or /", extra={"path": str(directory.path)})
            return
        if not os.path.lexists(directory.path):
            return
        if os.path.realpath(directory.path) != directory.real:
            log.warning("not cleaning a job directory that now leads somewhere else",
                        extra={"path": str(directory.path), "was": directory.real,
                               "now": os.path.realpath(directory.path)})
            return
        if directory.created:
            removed = _empty(directory.path)
            log.info("emptied the job directory the agent created",
                     extra={"path": str(directory.path), "removed": removed})
            return
        downloaded = set()
        for path in self.downloaded:
            try:
                downloaded.add(path.relative_to(directory.path).as_posix())
            except ValueError:
                continue
        job_paths = {d.path for d in self.directories}
        removed, kept = 0, []
        for top, dirnames, filenames in os.walk(directory.path, topdown=False):
            base = Path(top).relative_to(directory.path)
            for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(top, n))]:
                rel = (base / name).as_posix()
                if rel in directory.before and rel not in downloaded:
                    kept.append(rel)
                    continue
                try:
                    os.unlink(os.path.join(top, name))
                    removed += 1
                except OSError as error:
                    log.warning("could not remove", extra={"path": os.path.join(top, name),
                                                           "error": str(error)})
            for name in dirnames:
                rel = (base / name).as_posix()
                if (rel not in directory.before and not os.path.islink(os.path.join(top, name))
                        and directory.path / rel not in job_paths):  # another rule's: it stays
                    try:
                        os.rmdir(os.path.join(top, name))
                    except OSError:
                        pass  # holds something that could not be removed; already logged
        log.info("cleaned a directory that existed before the job: removed what the agent "
                 "downloaded and what appeared during the run, kept what was there before",
                 extra={"path": str(directory.path), "removed": removed, "kept": len(kept),
                        "kept_examples": sorted(kept)[:10]})


def _empty(directory: Path) -> int:
    removed = 0
    for entry in directory.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError as error:
            log.warning("could not remove", extra={"path": str(entry), "error": str(error)})
    return removed


def prepare_directories(plan: JobPlan, config: Config) -> JobDirectories:
    """Judge each of the job's directories by its real path (a symlink must not lead the job
    into a system directory), create the missing ones, and record what the others hold, so
    that clean() removes only what the job and the agent put there. Raises JobError."""
    prepared = []
    for path in sorted(plan.directories(), key=lambda p: len(p.parts)):
        real = os.path.realpath(path)
        problem = system_directory_problem(real)
        if problem:
            where = str(path) if real == str(path) else f"{path} (really {real})"
            raise JobError(f"local directory {where} {problem}")
        if os.path.lexists(path) and not path.is_dir():
            raise JobError(f"local directory {path} exists and is not a directory")
        created = not path.exists()
        if created:
            try:
                path.mkdir(parents=True)
            except OSError as error:
                raise JobError(f"cannot create local directory {path}: {error}") from None
            before = set()
        else:
            before = _contents(path)
        prepared.append(_JobDirectory(path=path, real=os.path.realpath(path), created=created,
                                      before=before, protected=_protected(real, config)))
    return JobDirectories(prepared)
