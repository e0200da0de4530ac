"""`make bench` exits non-zero when a target is missed, not only when a benchmark breaks."""

import types

import bench.__main__ as bench_main
from bench import targets


def run_bench_with(monkeypatch, met: bool) -> int:
    monkeypatch.setattr(targets, "missed", [])
    fake = types.SimpleNamespace(run=lambda: print(targets.verdict("fake target", met)))
    monkeypatch.setattr(bench_main.importlib, "import_module", lambda name: fake)
    return bench_main.main(["binary"])


def test_a_missed_target_fails_the_run(monkeypatch, capsys):
    assert run_bench_with(monkeypatch, met=False) == 1
    assert "targets missed: fake target" in capsys.readouterr().out


def test_met_targets_pass(monkeypatch, capsys):
    assert run_bench_with(monkeypatch, met=True) == 0
    assert "MET" in capsys.readouterr().out
