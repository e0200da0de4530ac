import pytest

from agent.jobs import JobError, child_environment, plan_for


def test_sync_job_plan_resolves_local_paths(make_config, tmp_path):
    config = make_config()
    plan = plan_for({
        "id": "j1", "command": "python", "arguments": ["a", 1], "environment": {"X": "1"},
        "heartbeat_interval": 2, "compression": True,
        "sync": {"before": [{"bucket": "b", "prefix": "in", "local_path": "inputs/"}],
                 "during": [{"bucket": "b", "prefix": "ck/", "local_path": "/abs/ck",
                             "pattern": r"\.pt$"}],
                 "after": []}}, config)
    assert plan.arguments == ["a", "1"]
    [before] = plan.before
    assert before.prefix == "in/" and before.local_dir == tmp_path / "inputs"
    assert before.compression
    [during] = plan.during
    assert str(during.local_dir) == "/abs/ck" and during.matches("x/model.pt")
    env = child_environment(plan, config)
    assert env["X"] == "1" and env["KELPIE_JOB_ID"] == "j1"
    assert env["CHECKPOINT_DIR"] == str(config.checkpoint_dir)


def test_legacy_job_plan(make_config, tmp_path):
    config = make_config(INPUT_DIR="i", CHECKPOINT_DIR="c", OUTPUT_DIR="o")
    plan = plan_for({"id": "j", "command": "run", "input_bucket": "b", "input_prefix": "in/",
                     "checkpoint_bucket": "b", "checkpoint_prefix": "ck/",
                     "output_bucket": "b2", "output_prefix": "out/"}, config)
    assert [(r.prefix, r.local_dir.name) for r in plan.before] == [("in/", "i"), ("ck/", "c")]
    assert [(r.prefix, r.local_dir.name) for r in plan.during] == [("ck/", "c"), ("out/", "o")]
    assert [(r.bucket, r.prefix) for r in plan.after] == [("b2", "out/")]


@pytest.mark.parametrize("job", [
    {"id": "j", "command": "", "sync": {}},
    {"id": "j", "command": "x", "sync": {"during": [{"bucket": "b", "local_path": "d",
                                                     "pattern": "("}]}},
    {"id": "j", "command": "x", "sync": {"during": [{"prefix": "p/"}]}},
])
def test_unrunnable_jobs_are_job_errors(make_config, job):
    with pytest.raises(JobError):
        plan_for(job, make_config())


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_is_evaluated_in_linear_time(make_config):
    """`^(a+)+$` froze the agent: Python's re took exponential time on a long name of `a`s,
    holding the GIL (no heartbeats, SIGTERM ignored)."""
    plan = plan_for({"id": "j", "command": "x", "sync": {"during": [
        {"bucket": "b", "local_path": "d", "pattern": r"^(a+)+$"}]}}, make_config())
    [rule] = plan.during
    assert not rule.matches("a" * 200 + "!")
    assert rule.matches("a" * 200)


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a)\1", "backreference"), (r"(?=x)", "lookahead"), ("(", "not a valid regular"),
])
def test_a_pattern_the_engine_refuses_fails_the_job_with_the_reason(make_config, pattern,
                                                                      reason):
    with pytest.raises(JobError) as refused:
        plan_for({"id": "j", "command": "x", "sync": {"during": [
            {"bucket": "b", "local_path": "d", "pattern": pattern}]}}, make_config())
    assert "sync.during[0].pattern" in str(refused.value) and reason in str(refused.value)
