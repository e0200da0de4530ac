"""What a sync entry may name: a pattern the agent can evaluate in linear time, and a local_path
that is not a system directory and does not climb out of the work directory. Both rules are the
agent's own (agent/pattern.py, agent/paths.py); the API refuses at submission what the agent
would refuse, answering 400 naming the field, and stores nothing."""

import copy

import pytest

from api.config import Settings
from api.errors import ValidationError
from api.jobspec import parse_job
from tests.api.jobdefs import legacy_job, sync_job


def with_entry(phase: str, **fields) -> dict:
    """A sync job whose first entry of `phase` has these fields changed."""
    job = sync_job()
    job["sync"] = copy.deepcopy(job["sync"])
    job["sync"][phase][0].update(fields)
    return job


def refusal(body) -> ValidationError:
    with pytest.raises(ValidationError) as refused:
        parse_job(body, Settings())
    return refused.value


# --- pattern -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a)\1", "backreference"),
    (r"a(?=b)", "lookahead"),
    (r"(?<!a)b", "lookbehind"),
    (r"(a)?(?(1)b|c)", "conditional"),
    (r"(?>a)", "atomic group"),
    (r"a++", "possessive repeat"),
    (r"(a{1000}){1000}", "too large"),
    ("(unclosed", "not a valid regular expression"),
])
def test_patterns_the_agent_cannot_evaluate_are_refused(pattern, reason):
    error = refusal(with_entry("during", pattern=pattern))
    assert error.field == "sync.during[0].pattern"
    assert reason in str(error)


@pytest.mark.parametrize("pattern", [
    r"^(a+)+$",  # catastrophic for a backtracking engine, linear for the agent's
    r"\.ckpt$", r"(?i)^checkpoint-\d+/", r"(?P<step>\d{1,8})\.(pt|safetensors)$", "",
])
def test_patterns_the_agent_evaluates_in_linear_time_are_accepted(pattern):
    job = parse_job(with_entry("during", pattern=pattern), Settings())
    assert job["sync"]["during"][0]["pattern"] == pattern


# --- local_path --------------------------------------------------------------------------------

REFUSED_PATHS = [
    "/", "//", "/etc", "/etc/", "/etc/ssl/private", "/usr/../etc", "/usr", "/usr/local/data",
    "/bin", "/sbin/x", "/lib", "/lib64", "/lib/x86_64-linux-gnu", "/proc", "/proc/self/cwd",
    "/sys", "/dev", "/dev/shm/x", "/boot", "/root", "/root/", "/home", "//home//", "/var",
    "/tmp", "/tmp/.", "/workspace/../etc", "../x", "../../etc", "a/../../b", "..", "~",
    "~/..",
]
ALLOWED_PATHS = [
    "/workspace/checkpoints", "/srv/data", "/root/run", "/home/me/ckpt", "/var/lib/job",
    "/tmp/job-1", "/kelpie/input", "inputs/", "checkpoints", "a/../b", ".", "./out",
    "~/ckpt", "/data//ckpt/./x/",
]


@pytest.mark.parametrize("local_path", REFUSED_PATHS)
@pytest.mark.parametrize("phase", ["before", "during", "after"])
def test_system_directories_and_climbing_paths_are_refused(phase, local_path):
    error = refusal(with_entry(phase, local_path=local_path))
    assert error.field == f"sync.{phase}[0].local_path"
    assert any(word in str(error) for word in ("system", "itself", "climbs")), str(error)


@pytest.mark.parametrize("local_path", ALLOWED_PATHS)
def test_absolute_and_contained_paths_stay_allowed(local_path):
    job = parse_job(with_entry("before", local_path=local_path), Settings())
    assert job["sync"]["before"][0]["local_path"] == local_path  # stored as given


def test_legacy_jobs_carry_no_local_path():
    # INPUT_DIR and friends come from the agent's own configuration, not from the job.
    job = parse_job(legacy_job(), Settings())
    assert job["sync"] is None


# --- over HTTP: 400 naming the field, and nothing stored ---------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    (with_entry("before", local_path="/etc"), "sync.before[0].local_path"),
    (with_entry("after", local_path="../../x"), "sync.after[0].local_path"),
    (with_entry("during", pattern=r"^(a+)\1$"), "sync.during[0].pattern"),
])
def test_refusals_over_http_name_the_field_and_store_nothing(api, user_key, body, field):
    status, error = api.request("POST", "/jobs", body, key=user_key)
    assert status == 400, error
    assert error["error"] == "bad_request" and error["field"] == field
    assert field in error["message"]
    status, error = api.request("POST", "/jobs/batch", [sync_job(), body], key=user_key)
    assert status == 400 and error["field"] == f"[1].{field}"
    _, listing = api.request("GET", "/jobs", key=user_key)
    assert listing["_count"] == 0


def test_an_absolute_local_path_is_accepted_over_http(api, user_key):
    body = with_entry("during", local_path="/workspace/checkpoints", pattern=r"^(a+)+$")
    status, job = api.request("POST", "/jobs", body, key=user_key)
    assert status == 202, job
    assert job["sync"]["during"][0]["local_path"] == "/workspace/checkpoints"


def test_the_openapi_document_states_both_rules(api):
    status, document = api.request("GET", "/docs/openapi.json")
    assert status == 200
    entry = document["components"]["schemas"]["SyncEntry"]["properties"]
    assert entry["pattern"]["maxLength"] == 1000
    assert "linear time" in entry["pattern"]["description"]
    assert "backreferences" in entry["pattern"]["description"]
    assert "/etc" in entry["local_path"]["description"]
