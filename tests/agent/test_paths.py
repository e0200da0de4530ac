import os
import re
from pathlib import Path

import pytest

from agent.paths import SyncRule, UnsafeKey, check_relative, safe_join


@pytest.mark.parametrize("rel", [
    "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "a/..", "", "dir/", "a\\..\\b",
    "nul\x00byte",
])
def test_unsafe_relative_paths_are_refused(rel):
    with pytest.raises(UnsafeKey):
        check_relative(rel)


def test_safe_join_refuses_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path, root / "link")
    with pytest.raises(UnsafeKey):
        safe_join(root, "link/secret.txt")
    assert safe_join(root, "a/b.txt") == Path(os.path.realpath(root)) / "a" / "b.txt"


def test_rule_keys_and_patterns(tmp_path):
    rule = SyncRule("b", "p/", tmp_path, re.compile(r"\.ckpt$"), compression=True)
    assert rule.key_for("x/m.ckpt") == "p/x/m.ckpt.gz"
    assert rule.rel_for_key("p/x/m.ckpt.gz") == "x/m.ckpt.gz"
    assert rule.matches("x/m.ckpt") and not rule.matches("x/m.tmp")
    with pytest.raises(UnsafeKey):
        rule.rel_for_key("other/x")
    with pytest.raises(UnsafeKey):
        rule.rel_for_key("p/../escape")
