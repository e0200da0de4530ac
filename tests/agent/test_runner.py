import signal
import sys
import time

from agent.runner import ChildProcess

IGNORES_SIGINT = """
import signal, sys, time, pathlib
signal.signal(signal.SIGINT, signal.SIG_IGN)
def on_term(*_):
    pathlib.Path(sys.argv[1]).write_text('term')
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
pathlib.Path(sys.argv[1] + '.ready').write_text('')
time.sleep(60)
"""

IGNORES_EVERYTHING = """
import signal, subprocess, sys, time, pathlib
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
pathlib.Path(sys.argv[1]).write_text(str(grandchild.pid))
time.sleep(60)
"""


def wait_for(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_escalates_to_sigterm(tmp_path):
    marker = tmp_path / "marker"
    child = ChildProcess(sys.executable, ["-c", IGNORES_SIGINT, str(marker)], {}, tmp_path)
    child.start()
    wait_for(tmp_path / "marker.ready")
    code = child.stop(grace=0.5)
    assert code == 143 and marker.read_text() == "term"


def test_sigkill_reaches_whole_process_group(tmp_path):
    marker = tmp_path / "pid"
    child = ChildProcess(sys.executable, ["-c", IGNORES_EVERYTHING, str(marker)], {}, tmp_path)
    child.start()
    wait_for(marker)
    while not marker.read_text():
        time.sleep(0.02)
    grandchild = int(marker.read_text())
    started = time.monotonic()
    code = child.stop(grace=0.3)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    try:
        with open(f"/proc/{grandchild}/stat") as stat:
            assert stat.read().split(") ", 1)[1][0] == "Z"  # killed, awaiting its reaper
    except FileNotFoundError:
        pass  # gone entirely


def test_exit_code_and_environment(tmp_path):
    child = ChildProcess(sys.executable, ["-c", "import os, sys; sys.exit(int(os.environ['C']))"],
                         {"C": "7"}, tmp_path)
    child.start()
    assert child.wait(30)
    assert child.returncode == 7
