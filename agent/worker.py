"""The agent's lifecycle: poll → claim → prepare directories → download → run → sync → report →
clean up → poll again."""

import signal
import sys
import threading
import time
from concurrent.futures import Future

from agent import blame
from agent import log as agent_log
from agent.client import ApiClient, ApiError, ApiUnavailable
from agent.config import Config
from agent.imds import DELETION_COST_UPLOADING, Imds
from agent.jobs import JobDirectories, JobError, JobPlan, child_environment, plan_for, prepare_directories
from agent.outcome import Completed, Failed, Lost, Outcome, ShuttingDown
from agent.runner import ChildProcess
from agent.state import StateFile
from agent.storage import DownloadCanceled, Fingerprint, Storage, TransferFailed
from agent.sync import DirectorySync
from agent.watch import iter_files
from agent.writers import Writers

log = agent_log.get_logger(__name__)

EXIT_OK = 0
EXIT_NODE_UNUSABLE = 3  # storage or work directory unusable, before or between jobs
EXIT_REFUSED = 4  # the API kept refusing our polls (wrong key, URL or identity)
# An empty long poll answered after at least this share of its wait was held by the server.
HELD_FRACTION = 0.5
# Poll answers that no retry will change: credentials, permissions, or the wrong URL.
PERMANENT_REFUSALS = (401, 403, 404)


def _destination(rule) -> tuple:
    """Rules with the same destination mirror the same objects: a file downloaded by one (or
    uploaded by a during rule) need not be uploaded again by another."""
    return (rule.bucket, rule.prefix, rule.local_dir, rule.compression)


# What `Worker._wait` returns when the job's time limit passed first (the attempt then ends as
# Failed("timed out"), after the steps that depend on where it was).
TIMED_OUT = "timed out"


class DeletionCost:
    """What this node tells IMDS its deletion would cost: 0 while idle, then the heartbeats
    of its job so far (the longer a job has run here, the more losing the node costs), and
    the highest value while its outputs go up, when an interruption would waste the most."""

    def __init__(self, imds: Imds):
        self.imds = imds
        self.uploading = False

    def claimed(self) -> None:
        self.uploading = False
        self.imds.set_deletion_cost(1)

    def beat(self, count: int) -> None:
        if not self.uploading:
            self.imds.set_deletion_cost(count)

    def uploading_outputs(self) -> None:
        self.uploading = True
        self.imds.set_deletion_cost(DELETION_COST_UPLOADING)

    def idle(self) -> None:
        self.uploading = False
        self.imds.set_deletion_cost(0)


class Heartbeat:
    """Heartbeats for one job on its own thread; notices cancellation and lost ownership.

    `on_beat(count)` is called after each answered heartbeat; `wake` is set when the job is
    lost, so whoever waits on the job hears of it at once."""

    def __init__(self, client: ApiClient, job_id: str, interval: float,
                 on_beat=lambda count: None, wake: threading.Event | None = None):
        self.client, self.job_id, self.interval = client, job_id, interval
        self.on_beat = on_beat
        self.wake = wake
        self.stop_event = threading.Event()
        self.lost = threading.Event()
        self.lost_status: str | None = None
        self.count = 0
        self.last_confirmed = time.monotonic()  # the claim itself confirmed it
        self.thread = agent_log.job_thread(self._run, name="kelpie-heartbeat")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def confirmed_recently(self) -> bool:
        """The API said "running" for us within two intervals: no one else can hold the job."""
        return (not self.lost.is_set()
                and time.monotonic() - self.last_confirmed < 2 * self.interval)

    def _run(self) -> None:
        # Nothing may end this thread while the job runs: without heartbeats the lease runs
        # out and the job moves to another machine while this one still works on it. Any
        # surprise is logged and the rhythm kept.
        # Fixed rate: each beat is due one interval after the previous one STARTED, so a slow
        # answer does not push the next beat later (the lease is counted from the last beat
        # that arrived). A beat that overran its slot is followed at once, never by a burst.
        due = time.monotonic() + self.interval
        while not self.stop_event.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            due = max(due + self.interval, started)
            try:
                if self._beat():
                    return
            except Exception:  # noqa: BLE001 - see above
                log.exception("heartbeat failed unexpectedly; the job keeps running")

    def _beat(self) -> bool:
        """One heartbeat; True once the job is no longer ours."""
        try:
            status = self.client.heartbeat(self.job_id, self.interval)
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("heartbeat refused", extra={"status": error.status})
                return False
            status = "canceled"
        except ApiUnavailable as error:
            log.warning("heartbeat failed; the job keeps running", extra={"error": str(error)})
            return False
        self.count += 1
        if status == "running":
            self.last_confirmed = time.monotonic()
        self.on_beat(self.count)
        if status is None or status == "running":
            return False  # None: answered, but without a status: neither confirmed nor lost
        log.info("the API says this job is no longer ours to run", extra={"status": status})
        self.lost_status = status
        self.lost.set()
        if self.wake is not None:
            self.wake.set()
        return True


class Worker:
    def __init__(self, config: Config):
        self.config = config
        self.shutdown = threading.Event()
        self.shutdown_signal: int | None = None
        # Set by whatever can end the wait on a running attempt: a signal, the child's exit,
        # the end of the downloads, a lost job (see _wait).
        self.wake = threading.Event()
        self.imds = Imds(config.imds_url)
        self.deletion_cost = DeletionCost(self.imds)
        self.client = ApiClient(config, self.imds, stop=self.shutdown)
        self.state = StateFile(config.state_file, config.machine_id)
        self.storage = Storage(config, listener=self.state)
        self.refusals = 0  # consecutive polls answered 401/403/404
        self.last_poll_held = False  # the last empty poll was held by the server (long poll)
        self.last_refusal = ""
        self.failures_here = 0  # the jobs' own failures here (MAX_JOB_FAILURES: reallocate)
        self.node_failures = 0  # this node's failures (MAX_JOB_FAILURES: exit non-zero)

    # --- signals ---

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.shutdown.is_set():
            return
        self.shutdown_signal = signum
        self.shutdown.set()
        self.wake.set()

    # --- the poll loop ---

    def run(self) -> int:
        log.info("agent started", extra={
            "machine_id": self.config.machine_id,
            "container_group_id": self.config.container_group_id,
            "api_url": self.config.api_url})
        try:
            problem = self.preflight()
            if problem:
                print(f"kelpie: cannot start: {problem}", file=sys.stderr, flush=True)
                return EXIT_NODE_UNUSABLE
            self.deletion_cost.idle()
            self.state.update(status="idle")
            idle_since = time.monotonic()
            while not self.shutdown.is_set():
                job = self._poll()
                if job is not None:
                    self._run_job(job)
                    idle_since = time.monotonic()
                    if self.shutdown.is_set():
                        break
                    if self.node_failures >= self.config.max_job_failures:
                        # Another machine may well do better: ask for one, and exit non-zero
                        # so an operator (or the orchestrator) sees the node was broken.
                        reason = f"{self.node_failures} node failures on this node"
                        log.error("this node failed too many jobs itself; exiting",
                                  extra={"node_failures": self.node_failures})
                        self.imds.reallocate(reason)
                        print(f"kelpie: giving up: {reason}", file=sys.stderr, flush=True)
                        return EXIT_NODE_UNUSABLE
                    if self.failures_here >= self.config.max_job_failures:
                        self.imds.reallocate(
                            f"{self.failures_here} failed jobs on this node")
                        return EXIT_OK
                    if self.config.recreate_between_jobs:
                        log.info("exiting so the container is recreated for the next job")
                        return EXIT_OK
                    continue
                idle = time.monotonic() - idle_since
                if self.config.max_time_with_no_work and idle >= self.config.max_time_with_no_work:
                    log.info("no work for too long; giving the node back",
                             extra={"idle_s": round(idle, 1)})
                    self.imds.reallocate("no work")
                    return EXIT_OK
                if self.refusals >= self.config.max_auth_failures:
                    reason = (f"the API refused {self.refusals} polls in a row, last: "
                              f"{self.last_refusal}")
                    log.error(reason)
                    print(f"kelpie: giving up: {reason}", file=sys.stderr, flush=True)
                    return EXIT_REFUSED
                pause = self._poll_pause()
                if pause:
                    self.shutdown.wait(pause)
            return EXIT_OK
        finally:
            log.info("agent stopping")
            self.state.update(status="stopped")
            self.state.close()
            self.storage.close()

    def _poll_pause(self) -> float:
        """The idle interval; after refusals, twice as long each time, up to the cap: a
        wrong key must not hammer the API at full rate. 0 after a long poll the server
        held (nothing came in its wait): poll again at once."""
        if not self.refusals:
            if self.last_poll_held:
                return 0
            return self.config.idle_poll_interval
        return min(self.config.auth_backoff_max,
                   self.config.idle_poll_interval * 2 ** self.refusals)

    def _poll(self) -> dict | None:
        self.last_poll_held = False
        wait = self.config.poll_wait
        started = time.monotonic()
        try:
            job = self._poll_interruptibly(wait)
            self.refusals = 0
            # An empty answer that came much sooner than the wait asked: the server ignores
            # `wait` (an older API) or is shutting down; keep the plain polling spacing, never
            # hammer it. One held for most of the wait: poll again at once.
            self.last_poll_held = (wait > 0 and job is None
                                   and time.monotonic() - started >= wait * HELD_FRACTION)
            return job
        except ApiError as error:
            log.error("the API refused our poll for work",
                      extra={"status": error.status, "body": error.body})
            if error.status in PERMANENT_REFUSALS:
                self.refusals += 1
                message = error.body.get("message") if isinstance(error.body, dict) else None
                self.last_refusal = f"{error.status} {message or error.body}"
        except ApiUnavailable as error:
            if not self.shutdown.is_set():
                log.warning("cannot reach the API; will poll again", extra={"error": str(error)})
        return None

    def _poll_interruptibly(self, wait: float) -> dict | None:
        """The poll; a long one runs on a helper thread, so a shutdown signal is acted on at
        once instead of after the hold (the abandoned request's connection closes with the
        process, and the server drops a waiter whose client is gone before claiming)."""
        if wait <= 0:
            return self.client.poll_work()
        answer: Future = Future()
        answer.add_done_callback(lambda _: self.wake.set())

        def poll():
            try:
                answer.set_result(self.client.poll_work(wait))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                answer.set_exception(error)

        self.wake.clear()
        threading.Thread(target=poll, name="kelpie-poll", daemon=True).start()
        # Sleeps on `wake`, set by the answer or by a signal; the cap is only a safety net.
        while not answer.done():
            if self.shutdown.is_set():
                return None
            self.wake.wait(1.0)
            self.wake.clear()
        return answer.result()

    # --- one job ---

    def _run_job(self, job: dict) -> None:
        token = agent_log.current_job_id.set(job.get("id"))
        try:
            self._run_job_inner(job)
        finally:
            agent_log.current_job_id.reset(token)

    def _run_job_inner(self, job: dict) -> None:
        job_id = job["id"]
        log.info("claimed a job", extra={"command": job.get("command"),
                                         "attempt_machine": self.config.machine_id})
        self.state.update(status="preparing", job_id=job_id, job=job, exit_code=None)
        self.wake.clear()
        heartbeat = Heartbeat(self.client, job_id, float(job.get("heartbeat_interval") or 30),
                              on_beat=self.deletion_cost.beat, wake=self.wake)
        claimed_at = time.monotonic()
        heartbeat.start()
        self.deletion_cost.claimed()
        directories = None
        try:
            try:
                plan = plan_for(job, self.config)
                directories = prepare_directories(plan, self.config)
            except JobError as error:
                outcome = self._invalid_job(error)
            else:
                deadline = claimed_at + plan.timeout_s if plan.timeout_s else None
                outcome = self._attempt(plan, heartbeat, directories, deadline)
        finally:
            heartbeat.stop()
        self._settle(job_id, outcome)
        if isinstance(outcome, ShuttingDown):
            self.state.update(status="stopping")
            return  # the node is going away: no cleaning, no further work
        if directories is not None:
            directories.clean()
        self.deletion_cost.idle()
        self.state.update(status="idle", job_id=None, job=None, child_pid=None)

    def _invalid_job(self, error: JobError) -> Failed:
        """A job this agent cannot even set up: the job's fault, unless the work directory
        itself is unusable (then any job would fail here)."""
        node = blame.work_dir_problem(self.config.work_dir)
        if node:
            return Failed(f"{node}; {error}", kind="node")
        return Failed(f"invalid job: {error}")

    def _wait(self, is_done, heartbeat: Heartbeat, deadline: float | None = None):
        """Block until `is_done()`; or return why not, whichever comes first: Lost,
        ShuttingDown, or TIMED_OUT (past `deadline`, a time.monotonic() value). None: done.

        Sleeps on `self.wake`, which every one of those events sets, so it answers at once;
        the one-second cap is only a safety net."""
        while True:
            if is_done():
                return None
            if heartbeat.lost.is_set():
                return Lost(heartbeat.lost_status)
            if self.shutdown.is_set():
                return ShuttingDown()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return TIMED_OUT
            self.wake.wait(1.0 if deadline is None else min(1.0, deadline - now))
            self.wake.clear()

    def _attempt(self, plan: JobPlan, heartbeat: Heartbeat, directories: JobDirectories,
                 deadline: float | None = None) -> Outcome:
        """One attempt, and how it ended; `deadline` (monotonic) is the job's timeout_s
        counted from the claim, the same start the API counts from."""
        # 1. sync.before, in a helper thread so a cancel or shutdown need not wait for it.
        self.state.update(status="downloading")
        downloads: Future = Future()
        downloads.add_done_callback(lambda _: self.wake.set())
        cancel = threading.Event()
        agent_log.job_thread(lambda: self._download(plan, downloads, cancel),
                             name="kelpie-download").start()
        stopped = self._wait(downloads.done, heartbeat, deadline)
        if stopped is not None:
            # Stop the download before anything cleans its directories, so no thread keeps
            # writing into them afterwards.
            cancel.set()
            try:
                downloads.exception(timeout=60)
            except TimeoutError:
                log.warning("the download did not stop within 60 s")
            if stopped is TIMED_OUT:
                log.warning("the job ran past its timeout while downloading",
                            extra={"timeout_s": plan.timeout_s})
                return Failed("timed out")
            return stopped
        try:
            known = downloads.result()
        except TransferFailed as error:
            node = self._node_problem(error)
            if node:
                return Failed(f"{node}; download failed: {error}", kind="node")
            return Failed(f"download failed: {error}")
        directories.record_downloaded(rule.local_dir / rel for rule in plan.before
                                      for rel in known.get(_destination(rule), {}))

        # 2. watch sync.during, then start the command.
        writers = Writers(self.config.writer_margin)
        syncers = [DirectorySync(
            rule, self.storage, known=known.get(_destination(rule), {}),
            watcher_mode=self.config.watcher_mode,
            poll_interval=self.config.watcher_poll_interval,
            debounce=self.config.watcher_debounce, rescan_interval=self.config.watcher_rescan,
            upload_threads=max(2, self.config.transfer_concurrency // 2),
            may_delete=heartbeat.confirmed_recently, writers=writers,
            commit_quiet=self.config.commit_quiet,
        ) for rule in plan.during]
        for syncer in syncers:
            syncer.start()
        child = ChildProcess(plan.command, plan.arguments, child_environment(plan, self.config),
                             self.config.work_dir, on_exit=self.wake.set)
        try:
            child.start()
        except OSError as error:
            for syncer in syncers:
                syncer.abandon()
            return Failed(f"command could not start: {error}")
        writers.attach(child)
        self.state.update(status="running", child_pid=child.pid)

        stopped = self._wait(child.exited.is_set, heartbeat, deadline)
        if stopped is TIMED_OUT:
            # Stopped like a cancel, but starting with SIGTERM: the limit is the job's own,
            # and what it checkpointed before still goes up below (a retry resumes from it).
            log.warning("the job ran past its timeout; stopping it",
                        extra={"timeout_s": plan.timeout_s})
            writers.note_signal(signal.SIGTERM)  # a save torn by the stop is not uploaded
            child.stop(self.config.kill_grace, signal.SIGTERM)
        elif isinstance(stopped, Lost):
            child.stop(self.config.kill_grace, signal.SIGINT)
            for syncer in syncers:
                syncer.abandon()
            return stopped
        elif isinstance(stopped, ShuttingDown):
            self._shut_down_with_child(child, syncers, writers)
            return stopped

        # 3. the command exited: last pass over the during directories.
        exit_code = child.returncode
        log.info("command exited", extra={"exit_code": exit_code})
        self.state.update(status="finishing", exit_code=exit_code, child_pid=None)
        during_errors = {}
        for syncer in syncers:
            for rel, error in syncer.finish().items():
                during_errors[f"{syncer.rule.local_dir}/{rel}"] = error
        if heartbeat.lost.is_set():
            return Lost(heartbeat.lost_status)
        if stopped is TIMED_OUT:
            return Failed("timed out", exit_code)
        if exit_code != 0:
            return Failed(f"command exited with {exit_code}", exit_code)

        # 4. sync.after, then completed. Deletion cost at its highest while outputs go up.
        self.deletion_cost.uploading_outputs()
        self.state.update(status="uploading")
        after_failed = self._upload_after(plan, syncers)
        if heartbeat.lost.is_set():
            return Lost(heartbeat.lost_status)
        if during_errors or after_failed:
            failed = list(during_errors) + after_failed
            reason = f"upload failed for {len(failed)} file(s), e.g. {failed[0]}"
            node = self._node_problem()
            if node:
                return Failed(f"{node}; {reason}", 0, kind="node")
            return Failed(reason, 0)
        return Completed()

    def _node_problem(self, error: BaseException | None = None) -> str | None:
        """Whether a failed transfer is this node's fault: the error itself says so, or the
        storage or the work directory fails the same check as before the first claim."""
        return (blame.node_fault(error)
                or (blame.storage_problem(self.storage) if self.storage.configured
                    else None)
                or blame.work_dir_problem(self.config.work_dir))

    def preflight(self) -> str | None:
        """Before the first claim: one line saying why this node cannot run jobs, or None."""
        return (blame.work_dir_problem(self.config.work_dir)
                or (blame.storage_problem(self.storage) if self.storage.configured
                    else None))

    def _download(self, plan: JobPlan, result: Future, cancel: threading.Event) -> None:
        known: dict = {}
        try:
            for rule in plan.before:
                fingerprints = self.storage.download_rule(rule, cancel)
                known.setdefault(_destination(rule), {}).update(fingerprints)
            # Directories the job writes into exist before it starts.
            for rule in plan.during + plan.after:
                rule.local_dir.mkdir(parents=True, exist_ok=True)
            result.set_result(known)
        except (TransferFailed, DownloadCanceled) as error:
            result.set_exception(error)
        except Exception as error:  # noqa: BLE001 - any download problem fails the attempt
            log.exception("download failed")
            result.set_exception(TransferFailed(str(error)))

    def _upload_after(self, plan: JobPlan, syncers: list[DirectorySync]) -> list[str]:
        failed = []
        for rule in plan.after:
            # Files a during-sync of the same destination already sent are not sent twice.
            already = {}
            for syncer in syncers:
                if _destination(syncer.rule) == _destination(rule):
                    already = syncer.known
            rels = []
            problems: dict = {}
            for path in iter_files(rule.local_dir, problems):
                rel = rule.rel_for_path(path)
                if rule.matches(rel) and already.get(rel) != Fingerprint.of(path):
                    rels.append(rel)
            for path, why in problems.items():
                if rule.matches(rule.rel_for_path(path)):
                    log.error("cannot upload a file", extra={"file": str(path), "reason": why})
                    failed.append(f"{path} ({why})")
            failed += [f"{rule.local_dir}/{rel}" for rel in self.storage.upload_files(rule, rels)]
            log.info("uploaded outputs", extra={"bucket": rule.bucket, "prefix": rule.prefix,
                                                "files": len(rels)})
        return failed

    def _shut_down_with_child(self, child: ChildProcess, syncers: list[DirectorySync],
                              writers: Writers) -> None:
        """The node is going away: pass the signal on, let the child write its last checkpoint,
        upload what it wrote, all within KELPIE_SHUTDOWN_GRACE_S; report nothing. The same
        order holds as while running: deletions only after the uploads before them, and what
        a child killed mid-write left behind is skipped (agent.writers)."""
        deadline = time.monotonic() + self.config.shutdown_grace
        signum = self.shutdown_signal or signal.SIGTERM
        log.info("shutting down: forwarding the signal to the command",
                 extra={"signal": signal.Signals(signum).name})
        self.state.update(status="stopping")
        writers.note_signal(signum)
        child.signal_group(signum)
        # Keep most of the grace for the child, but leave some for the last uploads.
        child_budget = max(0.0, (deadline - time.monotonic()) * 0.7)
        if not child.wait(child_budget):
            log.warning("command still running at the end of its grace; killing it")
            child.signal_group(signal.SIGKILL)
            child.wait(5)
        for syncer in syncers:
            errors = syncer.finish(timeout=max(0.5, deadline - time.monotonic()))
            if errors:
                log.warning("some checkpoints were not uploaded before shutdown",
                            extra={"files": sorted(errors)[:10]})

    # --- reports: the one place an attempt's outcome reaches the API ---

    def _settle(self, job_id: str, outcome: Outcome) -> None:
        match outcome:
            case Completed():
                self._report_completed(job_id)
            case Failed(reason=reason, exit_code=exit_code, kind=kind):
                self._report_failed(job_id, exit_code, reason, kind)
            case Lost(status=status):
                log.info("dropped the job without reporting", extra={"status": status})
            case ShuttingDown():
                log.info("left the job for another machine; nothing reported")

    def _report_completed(self, job_id: str) -> None:
        try:
            answer = self.client.report_completed(job_id)
            if answer.get("recorded") is False:
                _log_not_ours(answer)
            else:
                log.info("reported completed")
        except ApiError as error:
            log.warning("completion not accepted", extra={"status": error.status,
                                                          "body": error.body})
        except ApiUnavailable as error:
            log.error("could not report completion", extra={"error": str(error)})

    def _report_failed(self, job_id: str, exit_code: int | None, reason: str,
                       kind: str = "job") -> None:
        if kind == "node":
            self.node_failures += 1
        else:
            self.failures_here += 1
        try:
            answer = self.client.report_failed(job_id, exit_code, reason, kind)
            if answer.get("recorded") is False:
                _log_not_ours(answer)
            else:
                log.info("reported failed", extra={"exit_code": exit_code, "reason": reason,
                                                   "kind": kind})
        except ApiError as error:
            log.warning("failure not accepted", extra={"status": error.status,
                                                       "body": error.body})
        except ApiUnavailable as error:
            log.error("could not report failure", extra={"error": str(error)})


def _log_not_ours(answer: dict) -> None:
    """A 2xx with recorded false: the report came late (canceled, reclaimed or already
    final) and the API changed nothing. Nothing to do but say so."""
    log.info("the job was no longer ours; the report changed nothing",
             extra={"status": answer.get("status"), "answer": answer.get("message")})
