import os
from pathlib import Path

import pytest

from agent.paths import (
    SyncRule,
    UnsafeKey,
    UnsafeLocalPath,
    check_relative,
    local_path_problem,
    resolve_local_path,
    safe_join,
)
from agent.pattern import compile_pattern


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
    rule = SyncRule("b", "p/", tmp_path, compile_pattern(r"\.ckpt$"), compression=True)
    assert rule.key_for("x/m.ckpt") == "p/x/m.ckpt.gz"
    assert rule.rel_for_key("p/x/m.ckpt.gz") == "x/m.ckpt.gz"
    assert rule.matches("x/m.ckpt") and not rule.matches("x/m.tmp")
    with pytest.raises(UnsafeKey):
        rule.rel_for_key("other/x")
    with pytest.raises(UnsafeKey):
        rule.rel_for_key("p/../escape")


@pytest.mark.parametrize(("local_path", "expected"), [
    ("inputs/", "work/inputs"), ("a/../b", "work/b"), (".", "work"), ("./out//x/", "work/out/x"),
    ("~/ckpt", "home/ckpt"), ("~/a/../b", "home/b"), ("~bob/x", "work/~bob/x"),
    ("//data/./ckpt/", "/data/ckpt"), ("/workspace/checkpoints", "/workspace/checkpoints"),
])
def test_local_paths_resolve_against_the_work_directory_or_home(tmp_path, local_path, expected):
    resolved = resolve_local_path(local_path, tmp_path / "work", home=tmp_path / "home")
    assert resolved == (Path(expected) if expected.startswith("/") else tmp_path / expected)


@pytest.mark.parametrize("local_path", [
    "/", "/etc", "/usr/../etc", "/lib32", "/tmp", "/tmp/", "/home", "/var//", "../x", "~",
    "~/../x", "", " ", "a\x00b",
])
def test_refused_local_paths_do_not_resolve(tmp_path, local_path):
    assert local_path_problem(local_path)
    with pytest.raises(UnsafeLocalPath):
        resolve_local_path(local_path, tmp_path, home=tmp_path)
