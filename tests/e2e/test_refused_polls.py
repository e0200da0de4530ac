"""A wrong API key or URL must not poll forever at full rate: polls the API refuses (401, 403,
404) are spaced out exponentially up to a cap, and after KELPIE_MAX_AUTH_FAILURES in a row the
agent exits non-zero with the reason."""

import threading
import time

import pytest

from tests.support.loopback_http import LoopbackServer

EXIT_REFUSED = 4


class RefusingApi(LoopbackServer):
    """Refuses every poll with one status, and notes when each arrived."""

    def __init__(self, status: int):
        super().__init__()
        self.status = status
        self.polls: list[float] = []
        self._lock = threading.Lock()

    def respond(self, request):
        with self._lock:
            self.polls.append(time.monotonic())
        return self.status, {"error": "nope", "message": f"refused with {self.status}",
                             "field": None}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_polls_back_off_then_the_agent_exits_with_the_reason(agents, status):
    with RefusingApi(status) as api:
        agent = agents("machine-refused", KELPIE_API_URL=api.url, HEARTBEAT_INTERVAL_S="0.05",
                       KELPIE_MAX_AUTH_FAILURES="6", KELPIE_AUTH_BACKOFF_MAX_S="0.4")
        assert agent.process.wait(timeout=60) == EXIT_REFUSED

    assert len(api.polls) == 6
    gaps = [later - earlier for earlier, later in zip(api.polls, api.polls[1:], strict=False)]
    # 0.1, 0.2, 0.4, then the cap: at a fixed rate they would all be 0.05.
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
    assert all(0.39 <= gap < 2.0 for gap in gaps[2:]), gaps
    lines = [line for line in agent.output().splitlines() if line.startswith("kelpie: ")]
    assert len(lines) == 1 and f"refused 6 polls in a row, last: {status}" in lines[0], lines


def test_a_wrong_key_on_the_real_api_ends_the_agent(agents):
    agent = agents("machine-wrong-key", KELPIE_API_KEY="not-a-key", HEARTBEAT_INTERVAL_S="0.05",
                   KELPIE_MAX_AUTH_FAILURES="3", KELPIE_AUTH_BACKOFF_MAX_S="0.2")
    assert agent.process.wait(timeout=60) == EXIT_REFUSED
    assert "kelpie: giving up: the API refused 3 polls in a row, last: 403 invalid X-Kelpie-Key" \
        in agent.output()
