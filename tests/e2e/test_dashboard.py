"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright).

Most tests drive the worker protocol themselves, and one runs a real agent, so every change the
page shows happened in the API while the page was open: a live refresh, not a reload.
Screenshots go to test-artifacts/ui/.
"""

import sys

import pytest

from tests.api.jobdefs import sync_job
from tests.support import browser as browsers
from tests.support.api_process import ApiProcess
from tests.support.net import free_port, wait_until
from tests.support.salad_api import SaladApi

sync_api = browsers.require_browser()
expect = sync_api.expect
# The page refreshes every 3 s; on a busy 2-core CI machine one refresh can take a while more.
expect.set_options(timeout=15_000)
ARTIFACTS = browsers.ARTIFACTS / "ui"

GROUP = "dashboard-group"


@pytest.fixture(scope="module")
def salad_api():
    server = SaladApi().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, salad_api):
    directory = tmp_path_factory.mktemp("dashboard")
    # Salad's public API stood in for on loopback, so scaling rules can be made and evaluated.
    env = {"KELPIE_SALAD_API_URL": salad_api.url, "KELPIE_SALAD_API_KEY": salad_api.api_key,
           "KELPIE_AUTOSCALE_INTERVAL_S": "0.3", "KELPIE_SALAD_API_BACKOFF_S": "0.05"}
    server = ApiProcess(f"sqlite:///{directory / 'kelpie.db'}", env=env,
                        log_path=directory / "api.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browsers.launch(sync_api) as browser:
        yield browser


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Everything the page loads must come from the API itself (offline: no CDN).
    foreign = browsers.loopback_only(page)
    yield page
    page.screenshot(path=ARTIFACTS / f"{request.node.name}-end.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not foreign, f"the page fetched from elsewhere: {foreign}"


def sign_in(page, api, key):
    page.goto(api.url + "/ui")
    page.fill("#key", key)
    page.click("#signin")


def claim(api, key, machine_id):
    status, body = api.request("GET", f"/work?machine_id={machine_id}&container_group_id={GROUP}",
                               key=key)
    assert status == 200, body
    return body


def row(page, job_id):
    return page.locator(f'tr[data-job-id="{job_id}"]')


def test_wrong_key_is_refused(page, api):
    sign_in(page, api, "not-a-key")
    expect(page.locator("#signin-error")).to_have_text("That key was refused.")
    page.screenshot(path=ARTIFACTS / "wrong-key.png")
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_job_moves_pending_running_completed_while_open(page, api, user_key):
    sign_in(page, api, user_key)
    expect(page.locator("#jobs")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('kelpie-api-key')") == user_key

    status, job = api.request("POST", "/jobs", sync_job(container_group_id=GROUP), key=user_key)
    assert status == 202, job
    expect(row(page, job["id"]).locator(".status")).to_have_text("pending")
    page.screenshot(path=ARTIFACTS / "pending.png")

    [claimed] = claim(api, user_key, "machine-a")
    assert claimed["id"] == job["id"]
    expect(row(page, job["id"]).locator(".status")).to_have_text("running")
    expect(row(page, job["id"])).to_contain_text("machine-a")
    page.screenshot(path=ARTIFACTS / "running.png")

    status, _ = api.request("POST", f"/jobs/{job['id']}/completed",
                            {"machine_id": "machine-a", "container_group_id": GROUP},
                            key=user_key)
    assert status in (200, 202)
    expect(row(page, job["id"]).locator(".status")).to_have_text("completed")
    page.screenshot(path=ARTIFACTS / "completed.png")


def test_cancel_from_the_table_asks_first(page, api, user_key):
    status, job = api.request("POST", "/jobs", sync_job(container_group_id=GROUP), key=user_key)
    assert status == 202
    sign_in(page, api, user_key)
    cancel = row(page, job["id"]).locator("button.cancel")

    # Dismissing the confirmation changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    cancel.click()
    expect(row(page, job["id"]).locator(".status")).to_have_text("pending")
    assert api.request("GET", f"/jobs/{job['id']}", key=user_key)[1]["status"] == "pending"

    page.once("dialog", lambda dialog: dialog.accept())
    cancel.click()
    expect(row(page, job["id"]).locator(".status")).to_have_text("canceled")
    assert api.request("GET", f"/jobs/{job['id']}", key=user_key)[1]["status"] == "canceled"


def test_timeline_shows_an_interruption_and_each_attempt(page, api, user_key):
    status, job = api.request("POST", "/jobs", sync_job(container_group_id=GROUP,
                                                        heartbeat_interval=1), key=user_key)
    assert status == 202
    assert claim(api, user_key, "machine-a")[0]["id"] == job["id"]
    # machine-a falls silent; machine-b gets the job once its lease has run out.
    wait_until(lambda: claim(api, user_key, "machine-b"), timeout=30,
               message="the silent machine's job was never handed on")
    api.request("POST", f"/jobs/{job['id']}/failed",
                {"machine_id": "machine-b", "container_group_id": GROUP, "exit_code": 3,
                 "reason": "exit code 3"}, key=user_key)
    assert claim(api, user_key, "machine-c")[0]["id"] == job["id"]

    sign_in(page, api, user_key)
    row(page, job["id"]).locator("a").click()
    timeline = page.locator("#timeline")
    expect(timeline.locator("li")).to_have_count(7)
    kinds = timeline.locator("li").evaluate_all("items => items.map(i => i.dataset.kind)")
    assert kinds == ["created", "assigned", "heartbeat_lost", "assigned", "attempt_failed",
                     "requeued", "assigned"], kinds
    expect(timeline.locator('li[data-kind="heartbeat_lost"]')).to_contain_text("machine-a")
    expect(timeline.locator('li[data-kind="attempt_failed"]')).to_contain_text("exit code 3")
    runs = page.locator("#attempts-body tr")
    expect(runs).to_have_count(3)
    expect(runs.nth(0)).to_contain_text("heartbeat_lost")
    expect(runs.nth(1)).to_contain_text("attempt_failed (exit 3)")
    expect(page.locator('[data-field="status"]')).to_have_text("running")
    page.screenshot(path=ARTIFACTS / "timeline.png", full_page=True)

    # The job page cancels too, after asking.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator('[data-field="status"]')).to_have_text("canceled")
    expect(timeline.locator('li[data-kind="canceled"]')).to_have_count(1)

    # The fleet page lists the three machines and draws the day's activity.
    page.click('nav a[href="#/fleet"]')
    for machine in ("machine-a", "machine-b", "machine-c"):
        expect(page.locator("#machines-body")).to_contain_text(machine)
    expect(page.locator("#machines-body tr", has_text="machine-b")).to_contain_text("1")  # ban
    expect(page.locator("#activity-chart rect").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "fleet.png", full_page=True)


def test_filters_paging_and_the_administrator_sees_every_tenant(page, api, user_key):
    mine = [api.request("POST", "/jobs", sync_job(container_group_id="paging-group"),
                        key=user_key)[1] for _ in range(27)]
    # Another tenant's job, newest of all: first in the administrator's unfiltered list.
    other = api.create_user("dashboard-other")
    other_job = api.request("POST", "/jobs", sync_job(container_group_id="other-group"),
                            key=other)[1]

    sign_in(page, api, user_key)
    page.fill("#filter-group", "paging-group")
    page.press("#filter-group", "Enter")
    expect(page.locator("#jobs-summary")).to_have_text("27 job(s) · page 1 of 2")
    expect(page.locator("#jobs-body tr")).to_have_count(25)
    page.click("#page-next")
    expect(page.locator("#jobs-body tr")).to_have_count(2)
    expect(row(page, mine[0]["id"])).to_be_visible()  # the oldest is on the last page
    page.select_option("#filter-status", "canceled")
    expect(page.locator("#jobs-summary")).to_have_text("0 job(s) · page 1 of 1")
    page.select_option("#filter-status", "")
    page.fill("#filter-group", "")
    page.press("#filter-group", "Enter")
    expect(page.locator("#jobs-body tr").first).to_be_visible()
    expect(row(page, other_job["id"])).to_have_count(0)  # another tenant's job stays hidden

    page.click("#sign-out")
    expect(page.locator("#key")).to_be_visible()
    sign_in(page, api, api.admin_key)
    expect(page.locator("#who")).to_contain_text("all tenants")
    expect(row(page, other_job["id"])).to_be_visible()


def test_phone_layout(browser, api, user_key):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    api.request("POST", "/jobs", sync_job(container_group_id=GROUP), key=user_key)
    sign_in(page, api, user_key)
    expect(page.locator("#jobs-body tr").first).to_be_visible()
    # No sideways scrolling: the table folds into one card per job.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=ARTIFACTS / "phone-jobs.png", full_page=True)
    context.close()


def test_scaling_rules_create_edit_delete_with_last_evaluation(page, api, salad_api, request):
    key = api.create_user(request.node.name, org="acme", project="render")
    group_id = salad_api.add_group("acme", "render", "dashboard-rules", replicas=0)
    sign_in(page, api, key)
    page.click('nav a[href="#/rules"]')
    expect(page.locator("#rules-body")).to_contain_text("No scaling rules.")

    # A group Salad does not know: the form says why, and the user stays signed in.
    new = page.locator("#rule-new")
    new.locator('[name="container_group_id"]').fill("no-such-group")
    for name, value in (("min_replicas", "0"), ("max_replicas", "5"),
                        ("idle_threshold_seconds", "0")):
        new.locator(f'[name="{name}"]').fill(value)
    new.locator('button[type="submit"]').click()
    expect(new.locator(".form-error")).to_contain_text("no container group no-such-group")
    expect(page.locator("#nav")).to_be_visible()

    new.locator('[name="container_group_id"]').fill(group_id)
    new.locator('button[type="submit"]').click()
    rule = page.locator(f'tr[data-group="{group_id}"]')
    expect(rule).to_contain_text("0–5")
    # The autoscaler's next tick shows up without a reload.
    expect(rule).to_contain_text("→ target 0", timeout=15_000)

    rule.locator("button.edit").click()
    edit = page.locator("#rule-edit")
    edit.locator('[name="max_replicas"]').fill("7")
    edit.locator('button[type="submit"]').click()
    expect(rule).to_contain_text("0–7")
    assert api.request("GET", f"/scaling-rules/{group_id}", key=key)[1]["max_replicas"] == 7
    page.screenshot(path=ARTIFACTS / "scaling-rules.png", full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    rule.locator("button.delete").click()
    expect(rule).to_have_count(0)
    assert api.request("GET", f"/scaling-rules/{group_id}", key=key)[0] == 404


def test_job_page_lists_webhook_deliveries(page, api, user_key):
    # Nothing listens on this loopback port: the notification stays pending with its error.
    hook = f"http://127.0.0.1:{free_port()}/hook"
    status, job = api.request("POST", "/jobs", sync_job(container_group_id=GROUP, webhook=hook),
                              key=user_key)
    assert status == 202
    assert claim(api, user_key, "machine-hook")[0]["id"] == job["id"]
    sign_in(page, api, user_key)
    row(page, job["id"]).locator("a").click()
    delivery = page.locator("#webhooks-body tr").first
    expect(delivery).to_contain_text("running")   # the job status it notifies
    expect(delivery).to_contain_text("pending")   # not delivered yet
    expect(delivery.locator('td[data-label="Tries"]')).not_to_have_text("0")
    expect(delivery.locator('td[data-label="Last answer"]')).to_contain_text("Connection")


def test_a_real_agent_runs_the_job_while_the_page_watches(page, api, user_key, agents, group,
                                                           tmp_path):
    # The job runs until the test lets it finish, so "running" is certainly on screen first.
    release = tmp_path / "release"
    wait_for_release = ("import os, time\n"
                        f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\n")
    status, job = api.request("POST", "/jobs", {
        "command": sys.executable, "arguments": ["-c", wait_for_release],
        "container_group_id": group, "sync": {"before": [], "during": [], "after": []},
    }, key=user_key)
    assert status == 202, job
    sign_in(page, api, user_key)
    status_cell = row(page, job["id"]).locator(".status")
    expect(status_cell).to_have_text("pending")

    agents("machine-real")
    expect(status_cell).to_have_text("running", timeout=30_000)
    expect(row(page, job["id"])).to_contain_text("machine-real")
    expect(row(page, job["id"]).locator('td[data-label="Last heartbeat"]')).to_contain_text("ago")
    release.touch()
    expect(status_cell).to_have_text("completed", timeout=30_000)
    page.screenshot(path=ARTIFACTS / "real-agent-completed.png")
