"""Every limit the server enforces on submission is stated in the OpenAPI document, and the
document's numbers are the enforced ones: each is read from /docs/openapi.json and then probed
at the limit (accepted) and one past it (a 400 naming the field, or 413). Also the jobs that
could never run, refused at submission: bucket names S3 refuses, command lines execve refuses,
webhooks the sender would refuse."""

import http.client
import json
import urllib.request

import pytest

from api import execve
from tests.api.jobdefs import legacy_job, sync_job


@pytest.fixture(scope="module")
def spec(api):
    with urllib.request.urlopen(api.url + "/docs/openapi.json") as response:
        return json.load(response)


def job_request(spec):
    return spec["components"]["schemas"]["JobRequest"]["properties"]


def submit(api, key, job):
    return api.request("POST", "/jobs", job, key=key)


def accepted(api, key, job):
    status, body = submit(api, key, job)
    assert status == 202, body


def refused(api, key, job, field):
    status, body = submit(api, key, job)
    assert status == 400, body
    assert body["field"] == field, body
    assert set(body) >= {"error", "message", "field"}


@pytest.mark.parametrize("name", ["max_failures", "heartbeat_interval"])
def test_integer_ranges(api, user_key, spec, name):
    schema = job_request(spec)[name]
    low, high = schema["minimum"], schema["maximum"]
    accepted(api, user_key, sync_job(**{name: low}))
    accepted(api, user_key, sync_job(**{name: high}))
    refused(api, user_key, sync_job(**{name: low - 1}), name)
    refused(api, user_key, sync_job(**{name: high + 1}), name)


def test_command_and_container_group_lengths(api, user_key, spec):
    command = job_request(spec)["command"]["maxLength"]
    accepted(api, user_key, sync_job(command="x" * command))
    refused(api, user_key, sync_job(command="x" * (command + 1)), "command")
    group = job_request(spec)["container_group_id"]["maxLength"]
    accepted(api, user_key, sync_job(container_group_id="g" * group))
    refused(api, user_key, sync_job(container_group_id="g" * (group + 1)), "container_group_id")


def test_argument_count_and_sync_entries(api, user_key, spec):
    most = job_request(spec)["arguments"]["maxItems"]
    accepted(api, user_key, sync_job(arguments=["a"] * most))
    refused(api, user_key, sync_job(arguments=["a"] * (most + 1)), "arguments")
    entries = spec["components"]["schemas"]["Sync"]["properties"]["during"]["maxItems"]
    entry = sync_job()["sync"]["during"][0]
    accepted(api, user_key, sync_job(sync={"during": [entry] * entries}))
    refused(api, user_key, sync_job(sync={"during": [entry] * (entries + 1)}), "sync.during")


def test_page_size(api, user_key, spec):
    [parameter] = [p for p in spec["paths"]["/jobs"]["get"]["parameters"]
                   if p["name"] == "page_size"]
    most = parameter["schema"]["maximum"]
    assert api.request("GET", f"/jobs?page_size={most}", key=user_key)[0] == 200
    status, body = api.request("GET", f"/jobs?page_size={most + 1}", key=user_key)
    assert status == 400 and body["field"] == "page_size"
    assert api.request("GET", "/jobs?page_size=0", key=user_key)[0] == 400


def test_batch_size(api, user_key, spec):
    most = spec["components"]["schemas"]["JobBatchRequest"]["maxItems"]
    status, body = api.request("POST", "/jobs/batch", [sync_job()] * (most + 1), key=user_key)
    assert status == 400 and body["field"] == "body", body


def test_submission_routes_state_413_and_answer_it(api, user_key, spec):
    for path in ("/jobs", "/jobs/batch"):
        assert "413" in spec["paths"][path]["post"]["responses"], path
    # One byte over the default KELPIE_MAX_BODY_BYTES (8 MiB), announced in Content-Length:
    # the server answers before the body is sent (and closes, so none is).
    for path in ("/jobs", "/jobs/batch"):
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        connection.putrequest("POST", path)
        connection.putheader("X-Kelpie-Key", user_key)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(8 * 1024 * 1024 + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413, path
        assert json.loads(response.read())["error"] == "payload_too_large"
        connection.close()


@pytest.mark.parametrize("bucket", [
    "ab", "a" * 64, "My-Bucket", "bucket_name", "-bucket", "bucket-", "two..dots",
    "192.168.1.10", "xn--bucket", "bucket-s3alias", "bucket/inner",
])
def test_bucket_names_s3_refuses(api, user_key, spec, bucket):
    entry = {**sync_job()["sync"]["before"][0], "bucket": bucket}
    refused(api, user_key, sync_job(sync={"before": [entry]}), "sync.before[0].bucket")
    refused(api, user_key, legacy_job(output_bucket=bucket), "output_bucket")


def test_bucket_names_s3_accepts(api, user_key, spec):
    schema = spec["components"]["schemas"]["SyncEntry"]["properties"]["bucket"]
    for bucket in ("abc", "a" * schema["maxLength"], "my.bucket-1", "0-9"):
        entry = {**sync_job()["sync"]["before"][0], "bucket": bucket}
        accepted(api, user_key, sync_job(sync={"before": [entry]}))


def test_command_lines_execve_would_refuse(api, user_key):
    most = execve.MAX_STRING_BYTES
    accepted(api, user_key, sync_job(arguments=["x" * most]))
    refused(api, user_key, sync_job(arguments=["ok", "x" * (most + 1)]), "arguments[1]")
    # Many arguments, each within the limit, together too large.
    refused(api, user_key, sync_job(arguments=["y" * 100_000] * 11), "arguments")
    refused(api, user_key, sync_job(environment={"BIG": "z" * most}), "environment.BIG")
    # Multi-byte characters count in bytes, as the kernel counts them.
    refused(api, user_key, sync_job(arguments=["é" * (most // 2 + 1)]), "arguments[0]")


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/hook",
    "http://[::ffff:169.254.169.254]/", "http://example.com/hook",  # not in the allow list
    "ftp://127.0.0.1/hook", "http://127.0.0.1:99999/hook", "http://[::1/hook",
])
def test_webhooks_the_sender_would_refuse(api, user_key, url):
    before = api.request("GET", "/jobs", key=user_key)[1]["_count"]
    refused(api, user_key, sync_job(webhook=url), "webhook")
    assert api.request("GET", "/jobs", key=user_key)[1]["_count"] == before
