"""`make demo` as a newcomer runs it: the node loss, the job's history with the heartbeat_lost
line that tells the story, and a last line that says it is done."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_demo_prints_the_history_and_ends_with_done():
    result = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    # The newcomer is told where the dashboard is and which key opens it.
    assert any(re.search(r"dashboard http://127\.0\.0\.1:\d+/ui \(sign in with key \S+;", line)
               for line in lines), result.stdout[-4000:]
    history = lines[lines.index(next(line for line in lines if "the job's history" in line)):]
    kinds = [line.removeprefix("  >> ").split()[2] for line in history
             if line.startswith("  ") and "Z  " in line]
    assert kinds == ["created", "assigned", "heartbeat_lost", "assigned", "completed"]
    [lost] = [line for line in history if "heartbeat_lost" in line]
    assert lost.startswith("  >> ") and "handed to machine-b" in lost
    assert lines[-1].split("] ", 1)[1].startswith("done:")
