// The Kelpie dashboard: a single page over the JSON API. The API key lives in sessionStorage
// only (gone when the tab closes). Every value from the API is inserted as text, never as
// HTML, so a job's command or a machine id cannot inject markup.
"use strict";

const KEY_NAME = "kelpie-api-key";
const REFRESH_MS = 3000;
const PAGE_SIZE = 25;
const STATUSES = ["pending", "running", "completed", "failed", "canceled"];
const FINAL = new Set(["completed", "failed", "canceled"]);
const COLORS = { pending: "#8a6d00", running: "#0b6e99", completed: "#1b7f3b",
                 failed: "#b3261e", canceled: "#6b6b6b" };

let timer = null;        // the current page's live refresh
let me = null;           // the signed-in user (GET /users/me)
const jobFilters = { status: "", group: "", page: 1 };

// --- Small helpers --------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
    else if (name === "style") for (const [prop, v] of Object.entries(value)) node.style.setProperty(prop, v);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function flash(message) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function duration(seconds) {
  seconds = Math.round(seconds);
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function statusCell(status) {
  return h("span", { class: `status status-${status}` }, status);
}

function cell(label, ...content) {
  return h("td", { "data-label": label }, ...content);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body, key) {
  const headers = { "X-Kelpie-Key": key || sessionStorage.getItem(KEY_NAME) || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    // A 403 can mean "not for you" (another tenant's rule, an admin-only route) as well as a
    // key that no longer works: only the second signs out, so ask who we are.
    if ((response.status === 401 || response.status === 403) && !key && !(await keyStillWorks())) {
      signOut("Your key was refused: sign in again.");
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

async function keyStillWorks() {
  const response = await fetch("/users/me", {
    headers: { "X-Kelpie-Key": sessionStorage.getItem(KEY_NAME) || "" } });
  return response.ok;
}

// --- Signing in -----------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY_NAME);
  me = null;
  Object.assign(jobFilters, { status: "", group: "", page: 1 });  // the next user starts afresh
  location.hash = "#/signin";
  render();
  if (message) flash(message);
}

function showSignIn() {
  document.getElementById("nav").hidden = true;
  const input = h("input", { id: "key", type: "password", autocomplete: "off", required: true,
                             placeholder: "X-Kelpie-Key", "aria-label": "API key" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" });
  const form = h("form", { class: "signin card", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      me = await api("GET", "/users/me", undefined, input.value.trim());
    } catch (failure) {
      error.textContent = failure.status === 401 || failure.status === 403
        ? "That key was refused." : `Sign-in failed: ${failure.message}`;
      return;
    }
    sessionStorage.setItem(KEY_NAME, input.value.trim());
    location.hash = "#/jobs";
    render();
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "key" }, "API key"),
  input,
  h("button", { class: "primary", type: "submit", id: "signin" }, "Sign in"),
  h("p", { class: "muted" }, "The key stays in this browser tab only."),
  error);
  page(form);
  input.focus();
}

// --- Pages ----------------------------------------------------------------------------------

function page(...content) {
  const main = document.getElementById("main");
  main.replaceChildren(...content);
}

function live(refresh) {
  clearInterval(timer);
  const tick = () => refresh().catch((failure) => flash(failure.message));
  tick();
  timer = setInterval(tick, REFRESH_MS);
}

async function cancelJob(job) {
  if (!confirm(`Cancel job ${job.id}? A running job is stopped on its machine.`)) return false;
  try {
    await api("DELETE", `/jobs/${job.id}`);
    flash(`Job ${job.id} canceled.`);
    return true;
  } catch (failure) {
    flash(`Not canceled: ${failure.message}`);
    return false;
  }
}

function showJobs() {
  const status = h("select", { id: "filter-status", "aria-label": "Status", onchange: () => {
    jobFilters.status = status.value; jobFilters.page = 1; refresh();
  } }, h("option", { value: "" }, "any status"),
  STATUSES.map((name) => h("option", { value: name, selected: jobFilters.status === name }, name)));
  const group = h("input", { id: "filter-group", "aria-label": "Container group",
                             placeholder: "container group id", value: jobFilters.group,
                             onchange: () => { jobFilters.group = group.value.trim();
                                               jobFilters.page = 1; refresh(); } });
  const body = h("tbody", { id: "jobs-body" });
  const summary = h("span", { id: "jobs-summary", class: "muted" });
  const previous = h("button", { type: "button", id: "page-prev", onclick: () => {
    jobFilters.page -= 1; refresh(); } }, "← Newer");
  const next = h("button", { type: "button", id: "page-next", onclick: () => {
    jobFilters.page += 1; refresh(); } }, "Older →");
  const adminColumn = me && me.is_admin;

  async function refresh() {
    const query = new URLSearchParams({ page: jobFilters.page, page_size: PAGE_SIZE });
    if (jobFilters.status) query.set("status", jobFilters.status);
    if (jobFilters.group) query.set("container_group_id", jobFilters.group);
    const data = await api("GET", `/jobs?${query}`);
    const pages = Math.max(1, Math.ceil(data._count / PAGE_SIZE));
    summary.textContent = `${data._count} job(s) · page ${jobFilters.page} of ${pages}`;
    previous.disabled = jobFilters.page <= 1;
    next.disabled = jobFilters.page >= pages;
    body.replaceChildren(...data.jobs.map((job) => h("tr", { "data-job-id": job.id },
      cell("Job", h("a", { href: `#/job/${job.id}`, class: "mono" }, job.id.slice(0, 8))),
      cell("Status", statusCell(job.status)),
      adminColumn ? cell("User", h("span", { class: "mono" }, job.user_id.slice(0, 8))) : null,
      cell("Group", job.container_group_id || "—"),
      cell("Attempts", job.num_attempts ?? "—"),
      cell("Failures", `${job.num_failures} / ${job.max_failures}`),
      cell("Last heartbeat", job.status === "running" ? ago(job.heartbeat) : "—"),
      cell("Machine", job.machine_id || "—"),
      cell("Submitted", ago(job.created)),
      cell("", FINAL.has(job.status) ? "" : h("button", {
        type: "button", class: "danger cancel", onclick: async () => {
          if (await cancelJob(job)) refresh();
        } }, "Cancel")),
    )));
    if (!data.jobs.length) {
      body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No jobs match.")));
    }
  }

  page(h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" },
      h("label", {}, "Status", status), h("label", {}, "Group", group), summary),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {},
      ["Job", "Status", adminColumn ? "User" : null, "Group", "Attempts", "Failures",
       "Last heartbeat", "Machine", "Submitted", ""].filter((name) => name !== null)
        .map((name) => h("th", {}, name)))), body),
    h("div", { class: "pager" }, previous, next));
  live(refresh);
}

// Each attempt runs from its "assigned" event to the next event that ends it.
const ENDS_ATTEMPT = new Set(["heartbeat_lost", "attempt_failed", "completed", "canceled",
                              "purged", "failed"]);

function attempts(events, job) {
  const result = [];
  let open = null;
  for (const event of events) {
    if (event.kind === "assigned") {
      if (open) result.push(open);
      open = { attempt: event.attempt, machine: event.machine_id, start: event.at, end: null,
               outcome: "running" };
    } else if (open && ENDS_ATTEMPT.has(event.kind)) {
      open.end = event.at;
      open.outcome = event.kind + (event.exit_code !== null ? ` (exit ${event.exit_code})` : "");
      result.push(open);
      open = null;
    }
  }
  if (open) {
    if (FINAL.has(job.status)) open.outcome = job.status;
    result.push(open);
  }
  return result;
}

function describe(event) {
  const parts = [];
  if (event.machine_id) parts.push(`machine ${event.machine_id}`);
  if (event.attempt !== null) parts.push(`attempt ${event.attempt}`);
  if (event.exit_code !== null) parts.push(`exit code ${event.exit_code}`);
  if (event.reason) parts.push(event.reason);
  return parts.join(" · ");
}

function showJob(id) {
  const fields = h("dl", { class: "fields", id: "job-fields" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const runs = h("tbody", { id: "attempts-body" });
  const deliveries = h("tbody", { id: "webhooks-body" });
  const actions = h("div", { class: "toolbar" });
  const title = h("h1", {}, "Job ", h("span", { class: "mono" }, id));

  async function refresh() {
    const [job, history, hooks] = await Promise.all([
      api("GET", `/jobs/${id}`), api("GET", `/jobs/${id}/events`),
      api("GET", `/jobs/${id}/webhooks`)]);
    const shown = ["status", "container_group_id", "machine_id", "num_attempts", "num_failures",
      "max_failures", "num_heartbeats", "heartbeat_interval", "created", "started", "heartbeat",
      "completed", "failed", "canceled", "command", "arguments", "environment", "sync",
      "input_bucket", "input_prefix", "checkpoint_bucket", "checkpoint_prefix", "output_bucket",
      "output_prefix", "webhook", "user_id"];
    fields.replaceChildren(...shown.filter((name) => job[name] !== null && job[name] !== undefined)
      .flatMap((name) => {
        const value = job[name];
        const text = typeof value === "object" ? JSON.stringify(value) : String(value);
        return [h("dt", {}, name), h("dd", { "data-field": name, class:
          name === "status" ? `status status-${value}` : "mono" }, text)];
      }));
    timeline.replaceChildren(...history.events.map((event) => h("li",
      { class: `kind-${event.kind}`, "data-kind": event.kind },
      h("strong", {}, event.kind.replace("_", " ")), " ",
      h("span", { class: "when" }, when(event.at)),
      h("div", {}, describe(event)))));
    runs.replaceChildren(...attempts(history.events, job).map((run) => h("tr", {},
      cell("Attempt", run.attempt), cell("Machine", run.machine || "—"),
      cell("Started", when(run.start)),
      cell("Ran for", duration(((run.end ? Date.parse(run.end) : Date.now())
                                 - Date.parse(run.start)) / 1000)),
      cell("Outcome", run.outcome))));
    deliveries.replaceChildren(...hooks.deliveries.map((delivery) => h("tr", {},
      cell("Job status", delivery.job_status), cell("Delivery", delivery.status),
      cell("Tries", delivery.attempts), cell("Last answer",
        delivery.last_response_code ?? delivery.last_error ?? "—"),
      cell("Next try", delivery.status === "pending" ? when(delivery.next_attempt) : "—"))));
    if (!hooks.deliveries.length) {
      deliveries.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No webhook deliveries.")));
    }
    actions.replaceChildren(FINAL.has(job.status) ? h("span", { class: "muted" },
      `This job is ${job.status}.`) : h("button", { type: "button", class: "danger", id:
      "cancel-job", onclick: async () => { if (await cancelJob(job)) refresh(); } }, "Cancel job"));
  }

  page(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), title, actions, fields,
    h("h2", {}, "Timeline"), timeline,
    h("h2", {}, "Attempts"), h("table", { id: "attempts" }, h("thead", {}, h("tr", {},
      ["Attempt", "Machine", "Started", "Ran for", "Outcome"].map((name) => h("th", {}, name)))),
      runs),
    h("h2", {}, "Webhook deliveries"), h("table", { id: "webhooks" }, h("thead", {}, h("tr", {},
      ["Job status", "Delivery", "Tries", "Last answer", "Next try"].map((name) =>
        h("th", {}, name)))), deliveries));
  live(refresh);
}

function chart(activity) {
  // Stacked bars, one per hour; the y scale fits the busiest hour.
  const width = 720, height = 220, left = 36, bottom = 24, top = 10;
  const totals = activity.hours.map((_, index) =>
    STATUSES.reduce((sum, status) => sum + activity.counts[status][index], 0));
  const most = Math.max(1, ...totals);
  const slot = (width - left) / activity.hours.length;
  const scale = (height - bottom - top) / most;
  const bars = [];
  activity.hours.forEach((hour, index) => {
    let y = height - bottom;
    for (const status of STATUSES) {
      const count = activity.counts[status][index];
      if (!count) continue;
      const tall = count * scale;
      y -= tall;
      bars.push(svg("rect", { x: left + index * slot + 2, y, width: slot - 4, height: tall,
                              fill: COLORS[status] },
        svg("title", {}, `${new Date(hour).toLocaleString()}: ${count} ${status}`)));
    }
    if (index % 4 === 0) {
      bars.push(svg("text", { x: left + index * slot, y: height - 6, "font-size": 11,
                              fill: "#5f6b7a" }, new Date(hour).getHours() + ":00"));
    }
  });
  return h("figure", { style: { margin: "0" } },
    svg("svg", { class: "chart", id: "activity-chart", viewBox: `0 0 ${width} ${height}`,
                 role: "img", "aria-label": "Jobs entering each status per hour, last 24 h" },
      svg("text", { x: 2, y: top + 10, "font-size": 11, fill: "#5f6b7a" }, String(most)),
      svg("line", { x1: left, x2: width, y1: height - bottom, y2: height - bottom,
                    stroke: "#d9dee5" }),
      bars),
    h("figcaption", { class: "legend" }, STATUSES.map((status) =>
      h("span", { style: { "--swatch": COLORS[status] } }, status))));
}

function showFleet() {
  const machines = h("tbody", { id: "machines-body" });
  const chartBox = h("div", { id: "chart-box" });

  async function refresh() {
    const [fleet, activity] = await Promise.all([
      api("GET", "/fleet/machines"), api("GET", "/fleet/activity")]);
    machines.replaceChildren(...fleet.machines.map((machine) => h("tr", {},
      cell("Machine", h("span", { class: "mono" }, machine.machine_id)),
      cell("Group", machine.container_group_id || "—"),
      cell("Current job", machine.current_job_id ? h("a", { href: `#/job/${machine.current_job_id}`,
        class: "mono" }, machine.current_job_id.slice(0, 8)) : "idle"),
      cell("Last heartbeat", ago(machine.last_heartbeat)),
      cell("Last seen", ago(machine.last_seen)),
      cell("Bans", machine.bans))));
    if (!fleet.machines.length) {
      machines.append(h("tr", {}, h("td", { colspan: 6, class: "muted" },
        "No machine seen in the last hour.")));
    }
    chartBox.replaceChildren(chart(activity));
  }

  page(h("h1", {}, "Fleet"), h("h2", {}, "Machines seen in the last hour"),
    h("table", { id: "machines" }, h("thead", {}, h("tr", {},
      ["Machine", "Group", "Current job", "Last heartbeat", "Last seen", "Bans"].map((name) =>
        h("th", {}, name)))), machines),
    h("h2", {}, "Jobs entering each status per hour, last 24 h"), chartBox);
  live(refresh);
}

const LIMITS = ["min_replicas", "max_replicas", "idle_threshold_seconds"];

function ruleForm(rule, done) {
  const inputs = {};
  const group = h("input", { name: "container_group_id", required: true,
                             value: rule ? rule.container_group_id : "", disabled: !!rule });
  for (const name of LIMITS) {
    inputs[name] = h("input", { name, type: "number", min: 0, required: true,
                                value: rule ? rule[name] : "" });
  }
  const error = h("p", { class: "error form-error", role: "alert" });
  return h("form", { class: "card toolbar", id: rule ? "rule-edit" : "rule-new",
                     onsubmit: async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(LIMITS.map((name) => [name, Number(inputs[name].value)]));
    try {
      if (rule) await api("PATCH", `/scaling-rules/${encodeURIComponent(rule.container_group_id)}`, body);
      else await api("POST", "/scaling-rules", { container_group_id: group.value.trim(), ...body });
      done();
    } catch (failure) { error.textContent = failure.message; }
  } },
  h("label", {}, "Container group id", group),
  LIMITS.map((name) => h("label", {}, name.replaceAll("_", " "), inputs[name])),
  h("button", { class: "primary", type: "submit" }, rule ? "Save" : "Create rule"), error);
}

function showRules() {
  const body = h("tbody", { id: "rules-body" });
  const editor = h("div", { id: "rule-editor" });

  async function refresh() {
    const data = await api("GET", "/scaling-rules");
    body.replaceChildren(...data.rules.map((rule) => {
      const last = rule.last_evaluation;
      return h("tr", { "data-group": rule.container_group_id },
        cell("Container group", h("span", { class: "mono" }, rule.container_group_id),
             h("div", { class: "muted" }, rule.container_group_name)),
        cell("Replicas", `${rule.min_replicas}–${rule.max_replicas}`),
        cell("Idle threshold", `${rule.idle_threshold_seconds} s`),
        cell("Last evaluation", last ? `${ago(last.at)}: ${last.count} job(s) → target ` +
          `${last.target}, ${last.action || "no action"}${last.error ? `, error: ${last.error}` : ""}`
          : "not yet"),
        cell("", h("button", { type: "button", class: "edit", onclick: () => {
          editor.replaceChildren(h("h2", {}, `Edit ${rule.container_group_id}`),
                                 ruleForm(rule, () => { editor.replaceChildren(); refresh(); }));
        } }, "Edit"), " ", h("button", { type: "button", class: "danger delete", onclick: async () => {
          if (!confirm(`Delete the scaling rule of ${rule.container_group_id}?`)) return;
          try { await api("DELETE", `/scaling-rules/${encodeURIComponent(rule.container_group_id)}`); }
          catch (failure) { flash(failure.message); }
          refresh();
        } }, "Delete")));
    }));
    if (!data.rules.length) {
      body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No scaling rules.")));
    }
  }

  page(h("h1", {}, "Scaling rules"),
    h("table", { id: "rules" }, h("thead", {}, h("tr", {},
      ["Container group", "Replicas", "Idle threshold", "Last evaluation", ""].map((name) =>
        h("th", {}, name)))), body),
    editor, h("h2", {}, "New rule"), ruleForm(null, () => refresh()));
  live(refresh);
}

// --- Routing --------------------------------------------------------------------------------

async function render() {
  clearInterval(timer);
  if (!sessionStorage.getItem(KEY_NAME)) { showSignIn(); return; }
  if (!me) {
    try { me = await api("GET", "/users/me"); } catch { return; }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent =
    me.is_admin ? `${me.name} (administrator: all tenants)` : me.name;
  const [, route, arg] = (location.hash || "#/jobs").split("/");
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${route}`);
  }
  if (route === "job" && arg) showJob(arg);
  else if (route === "fleet") showFleet();
  else if (route === "rules") showRules();
  else showJobs();
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);
render();
