"""build/api.Dockerfile copies `api/` and only the agent modules the API imports: a module
the API starts importing from `agent/` must be added there, or the image fails at start-up
(found by CI's `make test-api-image`, minutes later; this finds it in a second)."""

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def agent_modules_imported_by_api() -> set[str]:
    """Every `agent.*` module the API imports, directly or through those modules."""
    pending = []
    for source in (REPO_ROOT / "api").rglob("*.py"):
        pending += imported_agent_modules(source)
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending += imported_agent_modules(REPO_ROOT / (module.replace(".", "/") + ".py"))
    return seen


def imported_agent_modules(source: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agent."):
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names if alias.name.startswith("agent.")]
    return modules


def test_the_api_image_copies_every_agent_module_the_api_imports():
    dockerfile = (REPO_ROOT / "build" / "api.Dockerfile").read_text()
    copied = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        copied.update(line.split()[:-1])
    needed = {module.replace(".", "/") + ".py" for module in agent_modules_imported_by_api()}
    assert needed, "the API imports nothing from agent/: is this test still needed?"
    assert not needed - copied, f"build/api.Dockerfile must COPY {sorted(needed - copied)}"
