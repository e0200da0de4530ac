"""Request bodies are declared once, in api/bodies.py, and the OpenAPI document cannot drift
from what the server enforces:

1. the served document's schema of every request body is exactly what its model produces, and
   each route that takes a body points at it;
2. every rule the document states is enforced, and every limit the validators enforce is one
   the document states. Each documented property of each body is probed in-process against the
   route's own validator: at and past each bound, blank, null, wrong type, absent; whatever the
   document accepts the server must accept, and whatever it refuses the server refuses with a
   400 naming that field. The few rules a JSON schema cannot state are listed in UNSTATED, each
   with where the document says it instead.
"""

import copy
import json
import re
import urllib.request

import pytest

from api import bodies
from api.config import Settings
from api.errors import Forbidden, ValidationError
from api.jobspec import parse_job
from api.principal import WORKER, Principal
from api.routes import scaling_rules, users, work
from tests.api.jobdefs import legacy_job, sync_job
from tests.support.api_process import ApiProcess

SETTINGS = Settings()
COMPONENTS = bodies.components()

# The route that takes each body: (path, method) -> component.
ROUTE_BODIES = {
    ("/jobs", "post"): "JobRequest",
    ("/jobs/batch", "post"): "JobBatchRequest",
    ("/scaling-rules", "post"): "ScalingRuleCreate",
    ("/scaling-rules/{container_group_id}", "patch"): "ScalingRuleUpdate",
    ("/users", "post"): "UserCreate",
    ("/users/{user_id}/token", "post"): "TokenCreate",
    ("/jobs/{job_id}/heartbeat", "post"): "WorkerReport",
    ("/jobs/{job_id}/completed", "post"): "CompletionReport",
    ("/jobs/{job_id}/failed", "post"): "FailureReport",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bodies")
    server = ApiProcess(f"sqlite:///{directory}/kelpie.db", log_path=directory / "api.log")
    server.start()
    try:
        with urllib.request.urlopen(server.url + "/docs/openapi.json") as response:
            yield json.load(response)
    finally:
        server.stop()


def test_the_document_states_each_body_as_its_model_does(document):
    served = document["components"]["schemas"]
    for name, model in bodies.MODELS.items():
        # Through JSON, as it is served (tuples become lists).
        assert served[name] == json.loads(json.dumps(bodies.openapi_schema(model))), name
    for (path, method), name in ROUTE_BODIES.items():
        body = document["paths"][path][method]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"}, (path, method)
    # Every body a listed route takes is a model's (none written by hand beside them).
    assert set(ROUTE_BODIES.values()) <= set(bodies.MODELS)


def test_the_work_query_states_the_reports_identity_limits(document):
    """GET /work validates machine_id and container_group_id as the reports do; its parameters
    say so with the reports' own limits."""
    parameters = {parameter["name"]: parameter["schema"]
                  for parameter in document["paths"]["/work"]["get"]["parameters"]}
    report = COMPONENTS["WorkerReport"]["properties"]
    for name in ("machine_id", "container_group_id"):
        assert parameters[name] == {key: value for key, value in report[name].items()
                                    if key not in ("nullable", "default")}, name
        longest = "x" * parameters[name]["maxLength"]
        identity = {"machine_id": "m", "container_group_id": None}
        work.worker_identity(ANY_WORKER, **{**identity, name: longest})
        with pytest.raises(ValidationError) as refused:
            work.worker_identity(ANY_WORKER, **{**identity, name: longest + "x"})
        assert refused.value.field == name


def test_the_document_is_openapi_3_0():
    """No JSON Schema 2020-12 forms the 3.0 document may not hold (pydantic's null type)."""
    text = json.dumps(COMPONENTS)
    assert '"type": "null"' not in text and "anyOf" not in text and "$defs" not in text
    for name, schema in COMPONENTS.items():
        for prop in schema.get("properties", {}).values():
            assert not ("$ref" in prop and len(prop) > 1), (name, prop)


def test_the_validators_read_the_models():
    """Change a limit in the model, and the validator enforces the new one."""
    body = sync_job(max_failures=1001)
    with pytest.raises(ValidationError):
        parse_job(body, SETTINGS)
    assert bodies.bounds(bodies.JobRequest, "max_failures") == (1, 1000)
    assert bodies.default(bodies.JobRequest, "max_failures") == SETTINGS.default_max_failures
    assert bodies.default(bodies.JobRequest, "heartbeat_interval") == \
        SETTINGS.default_heartbeat_interval


def test_a_report_is_checked_against_the_credential_before_its_own_fields():
    """A worker token speaking for another machine is refused (403) even when the report's own
    fields are bad too, as before the reports had models."""
    bound = Principal("u", scope=WORKER, machine_id="m2", container_group_ids=("g",))
    for parse in (work.parse_heartbeat, work.parse_completion, work.parse_failure):
        with pytest.raises(Forbidden):
            parse({"machine_id": "m1", "container_group_id": "g", "exit_code": "bad",
                   "kind": "bad"}, bound)


# --- Every stated rule is enforced; every enforced limit is stated ----------------------------

def _entry(direction="download"):
    return copy.deepcopy(sync_job()["sync"]["before" if direction == "download" else "during"][0])


# Each body: its validator (what the route runs before touching the database), the smallest
# body it accepts, and the prefix the validator puts on a field's name.
def _job(body):
    parse_job(body, SETTINGS)


def _entry_in_job(entry):
    parse_job(sync_job(sync={"before": [entry]}), SETTINGS)


def _sync_in_job(sync):
    parse_job(sync_job(sync=sync), SETTINGS)


# A worker credential bound to no machine and no group: the reports' fields alone decide.
ANY_WORKER = Principal("u", scope=WORKER)

BODIES = {
    "JobRequest": (_job, sync_job, ""),
    "SyncEntry": (_entry_in_job, _entry, "sync.before[0]."),
    "Sync": (_sync_in_job, lambda: {"during": [_entry("upload")]}, "sync."),
    "ScalingRuleCreate": (scaling_rules.parse_create,
                          lambda: {"container_group_id": "g", "min_replicas": 0,
                                   "max_replicas": 500, "idle_threshold_seconds": 0}, ""),
    "ScalingRuleUpdate": (lambda body: scaling_rules.parse_update(body, "g"), dict, ""),
    "UserCreate": (users.parse_user, lambda: {"name": "someone"}, ""),
    "TokenCreate": (users.key_options,
                    lambda: {"scope": "worker", "container_group_ids": ["g"]}, ""),
    "WorkerReport": (lambda body: work.parse_heartbeat(body, ANY_WORKER),
                     lambda: {"machine_id": "m"}, ""),
    "CompletionReport": (lambda body: work.parse_completion(body, ANY_WORKER),
                         lambda: {"machine_id": "m"}, ""),
    "FailureReport": (lambda body: work.parse_failure(body, ANY_WORKER),
                      lambda: {"machine_id": "m"}, ""),
}
assert set(BODIES) | {"JobBatchRequest"} == set(bodies.MODELS)

# Some properties are only meaningful beside others: the body a property is probed in.
BASES = {
    **{("JobRequest", name): legacy_job for name in bodies.LEGACY_FIELDS},
    ("JobRequest", "sync"): sync_job,
    ("TokenCreate", "expires_at"): lambda: {"scope": "user"},
    ("UserCreate", "username"): dict,
    ("ScalingRuleUpdate", "container_group_id"): dict,
}

# Valid text of a given length, for properties whose text has a form.
TEXT = {
    "webhook": lambda n: "http://hooks.example/" + "a" * (n - 21),
    "bucket": lambda n: "b" * n,
    **{name: lambda n: "b" * n for name in bodies.LEGACY_FIELDS if name.endswith("_bucket")},
    "expires_at": lambda n: "2999-01-01T00:00:00Z",
}
# Text long enough to find a limit the document does not state.
UNBOUNDED = 20_000

# Rules the server enforces that a JSON schema cannot state; the document says each in words,
# where the comment says. (component, property, probe); "*" for every probe of the property.
UNSTATED = {
    # "Either `sync`, or all six legacy bucket/prefix fields" (JobRequest's description).
    ("JobRequest", "sync", "absent"), ("JobRequest", "sync", "null"),
    *(("JobRequest", name, "absent") for name in bodies.LEGACY_FIELDS),
    *(("JobRequest", name, "null") for name in bodies.LEGACY_FIELDS),
    # The phase decides the direction (Sync's descriptions: before downloads, the rest upload).
    ("SyncEntry", "direction", "upload"),
    # `name`, or the original's `username` (UserCreate's description).
    ("UserCreate", "name", "absent"), ("UserCreate", "name", "null"),
    ("UserCreate", "username", "absent"), ("UserCreate", "username", "null"),
    # Required for, and only for, worker keys (container_group_ids' description); a key is a
    # user key unless scope says otherwise.
    ("TokenCreate", "container_group_ids", "absent"),
    ("TokenCreate", "container_group_ids", "null"),
    ("TokenCreate", "scope", "user"), ("TokenCreate", "scope", "absent"),
    # Ignored (their description).
    ("TokenCreate", "org_name", "*"), ("TokenCreate", "project_name", "*"),
    # The rule's own id, and no other (its description).
    ("ScalingRuleUpdate", "container_group_id", "*"),
    # The credential's Salad location, and no other (their description): checked against the
    # credential after this validation, with a 403.
    ("ScalingRuleCreate", "org_name", "*"), ("ScalingRuleCreate", "organization_name", "*"),
    ("ScalingRuleCreate", "project_name", "*"),
}

# What the document refuses and the server has always let through, kept for the clients that
# send it (the test checks each still is let through, so the list stays exact).
TOLERATED = {
    # An empty object where a phase's list goes counts as no entries.
    ("Sync", "before", "object"), ("Sync", "during", "object"), ("Sync", "after", "object"),
}

# The field a refusal names when it is not the property itself: the original's `username` is
# taken as `name`.
NAMED_AS = {("UserCreate", "username"): "name"}

def _accepts(schema: dict, value) -> bool:
    """What the document says of one value of one property (the keywords our bodies use)."""
    if value is None:
        return bool(schema.get("nullable"))
    if "allOf" in schema:
        return all(_accepts(part, value) for part in schema["allOf"])
    if "$ref" in schema:
        return isinstance(value, dict)  # probed through the component itself
    kind = schema.get("type")
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return False
    if kind == "boolean" and not isinstance(value, bool):
        return False
    if kind == "string" and not isinstance(value, str):
        return False
    if kind == "array" and not isinstance(value, list):
        return False
    if kind == "object" and not isinstance(value, dict):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if isinstance(value, int) and not isinstance(value, bool) and not (
            schema.get("minimum", value) <= value <= schema.get("maximum", value)):
        return False
    if isinstance(value, str):
        if schema.get("format") == "uri" and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://\S", value):
            return False
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        if schema.get("uniqueItems") and len(set(map(json.dumps, value))) != len(value):
            return False
        return all(_accepts(schema.get("items", {}), item) for item in value)
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return all(_accepts(schema["additionalProperties"], item) for item in value.values())
    return True


def _text(name: str, length: int) -> str:
    return TEXT.get(name, lambda n: "t" * n)(length)


def _probes(name: str, schema: dict):
    """(label, value) pairs at and around every bound the schema states, and past any it
    does not."""
    yield "null", None
    if "$ref" in schema or "allOf" in schema:
        return
    kind = schema.get("type")
    for value in schema.get("enum", []):
        yield str(value), value
    if kind == "integer":
        low, high = schema.get("minimum", -10**12), schema.get("maximum", 10**12)
        yield from (("low", low), ("high", high), ("below", low - 1), ("above", high + 1),
                    ("boolean", True), ("text", "1"))
    elif kind == "boolean":
        yield from (("true", True), ("false", False), ("number", 1))
    elif kind == "string":
        yield "number", 5
        if "enum" in schema:
            yield "other", "no-such-value"
            return
        if schema.get("format") == "date-time":
            yield "text", _text(name, 0)
            return
        shortest = schema.get("minLength", 0)
        yield "shortest", _text(name, max(shortest, 1))
        if shortest:
            yield "empty", ""
        if "pattern" not in schema or re.search(schema["pattern"], "x  x"):
            yield "blank", " " * max(shortest, 3)
        if "maxLength" in schema:
            yield "longest", _text(name, schema["maxLength"])
            yield "too long", _text(name, schema["maxLength"] + 1)
        else:
            yield "long", _text(name, UNBOUNDED)
    elif kind == "array":
        yield "object", {}
        most = schema.get("maxItems")
        if most is not None:
            yield "most", [f"g{index}" for index in range(most)]
            yield "too many", [f"g{index}" for index in range(most + 1)]
        if schema.get("minItems"):
            yield "too few", []
        if schema.get("uniqueItems"):
            yield "repeated", ["g", "g"]
        yield "number in it", [5]
    elif kind == "object":
        yield from (("empty", {}), ("list", []), ("one", {"NAME": "value"}),
                    ("number in it", {"NAME": 5}))


def _cases():
    for component in BODIES:
        schema = COMPONENTS[component]
        for name, prop in schema["properties"].items():
            for label, value in _probes(name, prop):
                yield component, name, label, value
            yield component, name, "absent", ...
        yield component, "no_such_field", "unknown", 1


def _sync_list(name: str, schema: dict, label: str, value):
    """A sync phase's list probes hold sync entries of the phase's direction, not strings."""
    if isinstance(value, list) and schema.get("items", {}).get("$ref", "").endswith("SyncEntry"):
        entry = _entry("download" if name == "before" else "upload")
        return [entry] * len(value) if label in ("most", "too many") else value
    return value


@pytest.mark.parametrize(("component", "name", "label", "value"), list(_cases()),
                         ids=lambda part: part if isinstance(part, str) else None)
def test_what_the_document_accepts_is_what_the_server_accepts(component, name, label, value):
    validate, base, prefix = BODIES[component]
    schema = COMPONENTS[component]
    prop = schema["properties"].get(name, {})
    body = (BASES.get((component, name)) or base)()
    if label == "absent":
        body.pop(name, None)
        documented = name not in schema.get("required", [])
    elif label == "unknown":
        body[name] = value
        documented = schema.get("additionalProperties", True) is not False
    else:
        value = _sync_list(name, prop, label, value)
        body[name] = value
        documented = _accepts(prop, value)
    if {(component, name, label), (component, name, "*")} & UNSTATED:
        pytest.skip("stated in the document's words, not its schema")
    if (component, name, label) in TOLERATED:
        assert not documented
        validate(body)
        return
    try:
        validate(body)
    except ValidationError as refusal:
        assert not documented, f"{component}.{name} = {label}: the document accepts it, the " \
                               f"server refuses it: {refusal}"
        field = prefix + NAMED_AS.get((component, name), name)
        assert refusal.field == field or refusal.field.startswith((field + ".", field + "[")), \
            (refusal.field, field)
    else:
        assert documented, f"{component}.{name} = {label}: the document refuses it, the server " \
                           "accepts it"


def test_every_exception_names_a_probe_that_exists():
    """UNSTATED, TOLERATED and BASES stay exact: a stale entry would hide nothing, but would
    mislead the next reader about what the document leaves unsaid."""
    probes = {(component, name, label) for component, name, label, _ in _cases()}
    properties = {(component, name) for component, name, _ in probes}
    for component, name, label in UNSTATED | TOLERATED:
        if label == "*":
            assert (component, name) in properties, (component, name)
        else:
            assert (component, name, label) in probes, (component, name, label)
    assert set(BASES) | set(NAMED_AS) <= properties
