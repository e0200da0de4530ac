"""Late or repeated reports: the API answers /completed and /failed with a 2xx whose
`recorded` is false (the job was no longer ours; nothing changed). The agent logs that and
carries on; it neither crashes nor counts it as anything else."""

import logging

import pytest

from agent.worker import Worker
from tests.support.loopback_http import LoopbackServer


class LateApi(LoopbackServer):
    def __init__(self):
        super().__init__()
        self.reports: list[tuple[str, dict]] = []

    def respond(self, request):
        self.reports.append((request.path, request.json))
        status = 200 if request.path.endswith("/completed") else 202
        return status, {"message": "nothing changed: job j-1 is canceled", "status": "canceled",
                        "recorded": False}


@pytest.mark.parametrize("report", ["completed", "failed"])
def test_a_report_that_changed_nothing_is_logged_and_survived(make_config, caplog, report):
    with LateApi() as api:
        worker = Worker(make_config(KELPIE_API_URL=api.url))
        try:
            with caplog.at_level(logging.INFO, logger="agent.worker"):
                if report == "completed":
                    worker._report_completed("j-1")
                else:
                    worker._report_failed("j-1", 1, "command exited with 1")
        finally:
            worker.storage.close()
            worker.state.close()
    assert [path for path, _ in api.reports] == [f"/jobs/j-1/{report}"]
    messages = [r.getMessage() for r in caplog.records]
    assert "the job was no longer ours; the report changed nothing" in messages
    assert not any(m.startswith(("reported", "completion not accepted",
                                 "failure not accepted")) for m in messages), messages


def test_a_failure_report_says_whose_fault_it_is(make_config):
    with LateApi() as api:
        worker = Worker(make_config(KELPIE_API_URL=api.url))
        try:
            worker._report_failed("j-1", None, "node failure: disk full", kind="node")
        finally:
            worker.storage.close()
            worker.state.close()
    assert api.reports[0][1]["kind"] == "node"
    assert worker.node_failures == 1 and worker.failures_here == 0
