"""The commands the README and docs/ tell a newcomer to type work on a fresh clone: Python is
always the project's `.venv/bin/python` (made by any make target), never a bare `python` that
lacks the pinned requirements. The API commands themselves run in tests/api/test_first_hour.py."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}
BARE = re.compile(r"(^|[\s;&|(])(python3?|pip3?)(\s|$)")


def shell_lines(path: Path):
    """Lines of the fenced blocks that are shell (or unlabelled), without comments."""
    language = None  # None: outside a block
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language in SHELL_LANGUAGES:
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                yield command


def test_documented_commands_use_the_virtualenv():
    offenders = []
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for command in shell_lines(path):
            if BARE.search(command):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {command}")
    assert not offenders, "\n".join(offenders)
