"""The checkpoint torture suite: real agents (`python -m agent`), real SeaweedFS, the real API,
a training program saving in each of the ways real programs save (tests/torture/trainer.py),
killed again and again at random moments of its save cycle.

Kill modes, in turn: the node vanishing (agent and child SIGKILLed together), the node shutting
down (SIGTERM to the agent, which forwards it and has a short grace), the child alone SIGKILLed
(as by the OOM killer; the agent reports a failure and the job goes back to the queue). After
every kill, the next machine must resume from a complete checkpoint no older than the one
before the last completed save; at the end the job must complete with its result intact.

Each kill is judged by what the next agent actually restores (the program's "resume" line, or
its "corrupt checkpoint" refusal), not by a listing taken at the moment of the kill: a PUT whose
body a SIGKILLed agent had already sent is still completed by the store a moment later, so an
early look can miss a checkpoint that the next machine does get.

The kill moments come from a seeded generator; the seed is printed, and
KELPIE_TORTURE_SEED=<seed> replays a run. KELPIE_TORTURE_KILLS_PER_STYLE sets how many kills
each save style gets: 6 (36 in all) in `make test`, 51 (306) in `make torture`.
"""

import json
import os
import random
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import object_keys, read_object
from tests.support.net import wait_until

TRAINER = str(Path(__file__).with_name("trainer.py"))
MODES = ["kill-all", "sigterm-agent", "kill-child"]
# Seconds between saves: enough for one save to be uploaded (and a directory committed, after
# KELPIE_COMMIT_QUIET_S) before the next save ends.
STEP_SECONDS = {"atomic": 0.3, "inplace": 0.3, "keep1": 0.3, "keep3": 0.3, "dirs": 1.5,
                "large": 2.0}
MARGIN = 0.5  # KELPIE_WRITER_MARGIN_S of the agents
COMMIT_QUIET = 1.0  # KELPIE_COMMIT_QUIET_S of the agents
KILLS_PER_STYLE = int(os.environ.get("KELPIE_TORTURE_KILLS_PER_STYLE", "6"))
SEED = int(os.environ.get("KELPIE_TORTURE_SEED") or secrets.randbelow(10**9))
TOTALS = {"kills": 0, "lost": 0, "torn": 0}

pytestmark = pytest.mark.torture


def replay_hint(style: str) -> str:
    return (f"replay: KELPIE_TORTURE_SEED={SEED} KELPIE_TORTURE_KILLS_PER_STYLE={KILLS_PER_STYLE} "
            f".venv/bin/python -m pytest -q 'tests/torture/test_torture.py::"
            f"test_checkpoints_survive_kills[{style}]'")


def journal(path: Path) -> list[tuple[int, float]]:
    """(step, time its save returned) of the completed saves of the current line of work,
    oldest first. A resume from step R rolls the program back: saves beyond R made before it
    were lost with their attempt (each was judged when its attempt was killed) and are no
    longer the program's history."""
    entries: list[tuple[int, float]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return entries
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "resume":
            entries = [(step, when) if step <= int(fields[1]) else (-1, when)
                       for step, when in entries]
        elif len(fields) == 2:
            entries.append((int(fields[0]), float(fields[1])))
    return entries


def resumes(path: Path) -> list[int]:
    """The step each start of the program resumed from, oldest first."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [int(line.split()[1]) for line in lines if line.startswith("resume ")]


def judge_resume(agent, journal_path: Path, resumes_before: int, required: int) -> str | None:
    """Wait for the program under `agent` to start from what it restored; None if that is a
    complete checkpoint no older than `required`, else "lost" or "torn" with details."""
    wait_until(lambda: len(resumes(journal_path)) > resumes_before
               or "corrupt checkpoint" in agent.output(), timeout=60, interval=0.01)
    started = resumes(journal_path)[resumes_before:]
    if not started:
        return f"torn: the program refused what it restored ({agent.log_path})"
    if started[0] < required:
        return f"lost: resumed from step {started[0]}, needed ≥ {required}"
    return None


@pytest.mark.parametrize("style", list(STEP_SECONDS))
def test_checkpoints_survive_kills(style, jobs, agents, s3, bucket, tmp_path):
    print(f"\ntorture seed {SEED} ({replay_hint(style)})")
    rng = random.Random(f"{SEED}-{style}")
    journal_path, finish = tmp_path / "journal", tmp_path / "finish"
    void: set[int] = set()  # journal lines the agent rightly treats as torn (see below)
    prefix = f"{style}/checkpoints/"
    period = STEP_SECONDS[style]
    job = jobs.submit(
        command=sys.executable,
        arguments=[TRAINER, "--style", style, "--journal", str(journal_path),
                   "--finish-flag", str(finish), "--step-seconds", str(period)],
        sync={"before": [{"bucket": bucket, "prefix": prefix, "local_path": "checkpoints",
                          "direction": "download"}],
              "during": [{"bucket": bucket, "prefix": prefix, "local_path": "checkpoints",
                          "direction": "upload"}],
              "after": [{"bucket": bucket, "prefix": f"{style}/outputs/",
                         "local_path": "outputs", "direction": "upload"}]},
        heartbeat_interval=1, max_failures=1000)
    env = {"KELPIE_SHUTDOWN_GRACE_S": "3", "MAX_JOB_FAILURES": "1000",
           "KELPIE_WRITER_MARGIN_S": str(MARGIN), "KELPIE_COMMIT_QUIET_S": str(COMMIT_QUIET)}
    # How long before a kill the agent (when it outlives the kill) treats a save as possibly
    # unfinished, by its documented rules: a file completed within KELPIE_WRITER_MARGIN_S of
    # the signal or the death; a directory changed within KELPIE_COMMIT_QUIET_S of it (the
    # program may have been killed between two files of the save).
    suspect = max(MARGIN, COMMIT_QUIET) if style == "dirs" else MARGIN
    failures = []
    # The kill awaiting its verdict: (what it was, starts of the program before it, the step
    # the next start must reach). It is judged when the next agent's program starts.
    pending = None

    def judge(agent, label: str, resumes_before: int, required: int) -> None:
        problem = judge_resume(agent, journal_path, resumes_before, required)
        TOTALS["kills"] += 1
        if problem:
            TOTALS["lost" if problem.startswith("lost") else "torn"] += 1
            failures.append(f"{label}: {problem}")

    for kill in range(KILLS_PER_STYLE):
        mode = MODES[kill % len(MODES)]
        agent = agents(f"{style}-{kill}", **env)
        try:
            wait_until(lambda a=agent: a.state().get("status") == "running" and a.child_pid(),
                       timeout=60)
        except TimeoutError:
            raise AssertionError(
                f"{style} kill {kill}: the job never ran\n" + "\n".join(failures) + "\n"
                + agent.output()[-3000:] + "\n" + replay_hint(style)) from None
        if pending is not None:
            judge(agent, *pending)
        child = agent.child_pid()
        # A random moment of the save cycle: after 0-2 saves of this attempt, then anywhere
        # within one period (mid-write, mid-upload, between saves).
        saves = rng.randint(0, 2)
        delay = rng.uniform(0, period)
        start = len(journal(journal_path))
        wait_until(lambda s=start, n=saves: len(journal(journal_path)) >= s + n, timeout=60,
                   interval=0.01)
        time.sleep(delay)  # the seeded kill moment itself, not a wait for an event
        killed_at = time.time()
        if mode == "kill-all":
            agent.kill_hard()
        elif mode == "sigterm-agent":
            agent.signal(signal.SIGTERM)
            agent.process.wait(30)
        else:
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # The agent's final pass and its failure report; then the node goes.
            wait_until(lambda a=agent: a.state().get("status") == "idle", timeout=60)
            agent.stop()
        entries = journal(journal_path)
        if mode != "kill-all":
            # The agent outlives these kills and judges the child's last saves (`suspect`):
            # those are never uploaded or committed, so they do not count as completed.
            void |= {i for i, (_, when) in enumerate(entries) if when >= killed_at - suspect}
        steps = [step for i, (step, _) in enumerate(entries) if i not in void and step >= 0]
        required = steps[-2] if len(steps) >= 2 else 0
        pending = (f"kill {kill} ({mode}, after {saves} saves + {delay:.3f} s)",
                   len(resumes(journal_path)), required)
    # The end: no more kills; the job must complete with its result intact.
    finish.touch()
    last = agents(f"{style}-final", **env)
    if pending is not None:
        judge(last, *pending)
    done = jobs.wait_status(job["id"], "completed", timeout=180, agents=[last])
    result = json.loads(read_object(s3, bucket, f"{style}/outputs/result.json"))
    print(f"torture {style}: {KILLS_PER_STYLE} kills, {len(failures)} lost or torn, "
          f"seed {SEED}; totals so far {TOTALS}")
    assert not failures, "\n".join(failures) + "\n" + replay_hint(style)
    assert result["total"] == result["last_step"] * (result["last_step"] + 1) // 2, result
    assert done["status"] == "completed"
    assert object_keys(s3, bucket, f"{style}/outputs/") == [f"{style}/outputs/result.json"]
