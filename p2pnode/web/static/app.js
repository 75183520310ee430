// p2pnode dashboard: one page, hash routes, plain JS, no build step.
//
// Data comes from the node's own HTTP API (/api/v1, same origin, the auth
// cookie rides along) and stays current through one EventSource on
// /api/v1/events: a snapshot first, then `job` and `nodes` events.  Pages
// re-render from that state; the job page also re-fetches its describe and
// history when an event touches its job (or one of its runs).
"use strict";

// Set once per page load: a test asserts it survives live updates (no reload).
window.P2P_DASHBOARD_LOADED_AT = Date.now();

const state = {
  jobs: new Map(), // job_id -> job summary (the /api/v1/jobs rows), live
  nodes: [], // the peers list, live
  live: "connecting",
  job: null, // the job page's data: {id, view, history, runs, error}
  changed: new Set(), // job ids updated since the last jobs render (flash)
  selfId: null, // this node's id (from /healthz)
};

const TERMINAL = new Set(["completed", "failed", "stopped"]);
const JOB_STATES = ["queued", "scheduled", "running", "suspended", "completed", "failed", "stopped"];
const KINDS = ["batch", "service", "daemon", "ops", "dag", "chain", "cron", "stream", "run"];

// --- small helpers ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value);
  }
  return append(el, children);
}

function badge(value) {
  const text = value || "?";
  return h("span", { class: `badge st-${cssName(text)}` }, text);
}

function cssName(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-");
}

function shortId(id, n = 12) {
  if (!id) return "";
  return id.length > n + 1 ? `${id.slice(0, n)}…` : id;
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return today ? time : `${d.toISOString().slice(0, 10)} ${time}`;
}

function fmtMs(ms) {
  return ms ? fmtTime(new Date(ms).toISOString()) : "—";
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${Math.round(seconds % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

function fmtBytes(n) {
  if (!n) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Peer ids (12D3KooW + 44 chars) make reasons unreadable: shorten them in text.
const PEER_ID = /\b(12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})\b/g;
function prose(text, cls) {
  const str = String(text || "");
  const parts = [];
  let last = 0;
  for (const m of str.matchAll(PEER_ID)) {
    parts.push(str.slice(last, m.index), h("span", { class: "mono", title: m[0] }, shortId(m[0], 12)));
    last = m.index + m[0].length;
  }
  parts.push(str.slice(last));
  return h("span", { class: cls || null, title: str }, parts);
}

function jobLink(id, text) {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, text || shortId(id, 14));
}

function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v ?? "—"))));
}

function table(id, headers, rows, emptyText) {
  return h("table", { id },
    h("thead", null, h("tr", null, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : null }, x.replace(/#$/, ""))))),
    h("tbody", null, rows.length ? rows : h("tr", null, h("td", { class: "empty", colspan: headers.length }, emptyText || "nothing yet"))));
}

// --- API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
  if (response.status === 401) {
    showUnauthorized();
    throw new ApiError(401, "unauthorized");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showUnauthorized() {
  document.getElementById("view").hidden = true;
  document.getElementById("unauthorized").hidden = false;
  setLive("offline");
}

// --- live updates -------------------------------------------------------------------

let events = null;

function setLive(value) {
  state.live = value;
  const el = document.getElementById("live");
  el.dataset.live = value;
  el.textContent = value;
}

function connect() {
  events = new EventSource("/api/v1/events");
  events.addEventListener("open", () => setLive("live"));
  events.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    state.jobs = new Map((data.jobs || []).map((j) => [j.job_id, j]));
    state.nodes = data.nodes || [];
    setLive("live");
    refresh({ all: true });
  });
  events.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    const before = state.jobs.get(job.job_id);
    state.jobs.set(job.job_id, job);
    if (!before || before.state !== job.state) state.changed.add(job.job_id);
    refresh({ job });
  });
  events.addEventListener("left", (e) => {
    // Forgotten by the node (this stream takes no filter): drop its row.
    state.jobs.delete(JSON.parse(e.data).job_id);
    refresh({ left: true });
  });
  events.addEventListener("nodes", (e) => {
    state.nodes = JSON.parse(e.data);
    refresh({ nodes: true });
  });
  events.addEventListener("error", () => {
    // EventSource reconnects by itself; tell a lost token from a lost node.
    setLive(events.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
    api("/healthz").catch(() => {});
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  });
}

// Initial data by plain requests too: the page is useful even if the event
// stream is slow to open (and the snapshot then replaces it).
async function loadOnce() {
  try {
    const [jobs, nodes, health] = await Promise.all([api("/api/v1/jobs"), api("/api/v1/nodes"), api("/healthz")]);
    if (state.jobs.size === 0) state.jobs = new Map(jobs.map((j) => [j.job_id, j]));
    if (state.nodes.length === 0) state.nodes = nodes;
    if (health && health.node_id) {
      state.selfId = health.node_id;
      const el = document.getElementById("node-id");
      el.textContent = `node ${shortId(health.node_id, 16)}`;
      el.title = health.node_id;
    }
    refresh({ all: true });
  } catch (err) {
    if (err.status !== 401) console.warn("initial load:", err);
  }
}

// --- routing ------------------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "peers") return { page: "peers", params };
  if (parts[0] === "jobs" && parts[1]) return { page: "job", id: parts[1], params };
  return { page: "jobs", params };
}

let route = parseRoute();

function onRoute() {
  route = parseRoute();
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (route.page === "job" ? "jobs" : route.page));
  });
  if (route.page === "job") {
    state.job = { id: route.id, view: null, history: [], runs: null, error: null };
    loadJob();
  }
  render();
}

let pendingRender = false;
function refresh(what) {
  if (route.page === "job") {
    // The job page renders from its own requests: reload them when the event
    // touches this job or one of its runs, and leave the page alone otherwise.
    const job = what.job;
    const id = state.job && state.job.view ? state.job.view.job_id : state.job && state.job.id;
    if (what.all || (job && (job.job_id === id || job.parent === id || job.job_id.startsWith(`${id}`)))) {
      scheduleJobReload();
    }
    return;
  }
  if (route.page === "peers" && what.job) return; // nothing of a job is on it
  if (pendingRender) return;
  pendingRender = true;
  requestAnimationFrame(() => { pendingRender = false; render(); });
}

function render() {
  const view = document.getElementById("view");
  let page;
  if (route.page === "peers") page = renderPeers();
  else if (route.page === "job") page = renderJob();
  else page = renderJobs();
  view.replaceChildren(page);
  state.changed.clear();
}

// --- jobs page ------------------------------------------------------------------------

function jobFilters() {
  const p = route.params;
  return { state: p.get("state") || "", kind: p.get("kind") || "", name: p.get("name") || "" };
}

function setFilter(key, value) {
  const params = new URLSearchParams(route.params);
  if (value) params.set(key, value); else params.delete(key);
  const query = params.toString();
  history.replaceState(null, "", `#/jobs${query ? `?${query}` : ""}`);
  route = parseRoute();
  render();
  const again = document.getElementById(`filter-${key}`);
  if (again && key === "name") { again.focus(); again.setSelectionRange(value.length, value.length); }
}

function renderJobs() {
  const f = jobFilters();
  // A DAG's or chain's task runs are listed as jobs of kind "run": the job's
  // own page shows them; the list keeps them out unless that kind is asked for.
  const listed = [...state.jobs.values()].filter((j) => !j.parent);
  const all = f.kind === "run" ? listed : listed.filter((j) => j.type !== "run");
  const hiddenRuns = listed.length - all.length;
  const shown = all.filter((j) =>
    (!f.state || j.state === f.state) &&
    (!f.kind || j.type === f.kind) &&
    (!f.name || (j.name || "").toLowerCase().includes(f.name.toLowerCase())));
  const submitted = (j) => j.submitted_ms || Date.parse(j.submitted_at || "") || 0;
  shown.reverse().sort((a, b) => submitted(b) - submitted(a)); // newest first, ties too
  const counts = {};
  for (const j of all) counts[j.state] = (counts[j.state] || 0) + 1;

  const select = (key, values, label) => h("label", null, label,
    h("select", { id: `filter-${key}`, onchange: (e) => setFilter(key, e.target.value) },
      h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === f[key] }, key === "state" && counts[v] ? `${v} (${counts[v]})` : v))));

  const rows = shown.map((j) => h("tr", {
    class: `job-row${state.changed.has(j.job_id) ? " flash" : ""}`,
    dataset: { jobId: j.job_id, state: j.state },
  },
  h("td", null, jobLink(j.job_id)),
  h("td", null, j.name || h("span", { class: "muted" }, "(unnamed)")),
  h("td", null, j.type),
  h("td", null, badge(j.state)),
  h("td", { class: "mono", title: j.owner || selfId() }, shortId(j.owner || selfId(), 14)),
  h("td", null, fmtTime(j.submitted_at)),
  h("td", null, fmtTime(j.started_at)),
  h("td", null, fmtTime(j.finished_at)),
  h("td", { class: "num" }, fmtDuration(j.duration_s)),
  h("td", { class: "muted reason-cell" }, prose(j.reason))));

  return h("section", { id: "jobs-page" },
    h("div", { class: "page-head" },
      h("div", { class: "grow" }, h("h1", null, "Jobs"),
        h("div", { class: "sub" }, `${all.length} jobs · ${counts.running || 0} running · ${counts.completed || 0} completed · ${counts.failed || 0} failed` +
          (hiddenRuns ? ` · ${hiddenRuns} task runs (kind “run”)` : ""))),
      h("div", { class: "filters" },
        select("state", JOB_STATES, "State"),
        select("kind", KINDS, "Kind"),
        h("label", null, "Name", h("input", {
          type: "search", id: "filter-name", value: f.name, placeholder: "contains…",
          oninput: (e) => setFilter("name", e.target.value),
        })))),
    h("div", { class: "panel flush" },
      table("jobs", ["Job", "Name", "Kind", "State", "Owner", "Submitted", "Started", "Finished", "Duration#", "Reason"],
        rows, all.length ? "no job matches these filters" : "no jobs yet: submit one with `p2pnode job run`")));
}

// --- peers page -----------------------------------------------------------------------

function renderPeers() {
  const nodes = [...state.nodes].sort((a, b) => (b.self ? 1 : 0) - (a.self ? 1 : 0) || a.node_id.localeCompare(b.node_id));
  const rows = nodes.map((n) => {
    const max = n.max_executions || 0;
    const running = n.running || 0;
    const pct = max ? Math.min(100, (100 * running) / max) : 0;
    const labels = Object.entries(n.labels || {});
    return h("tr", { class: "peer-row", dataset: { nodeId: n.node_id, status: n.status || "alive" } },
      h("td", null, h("span", { class: "mono", title: n.node_id }, shortId(n.node_id, 20)), n.self ? h("span", { class: "self" }, "this node") : null),
      h("td", null, badge(n.status || "alive")),
      h("td", null, labels.length ? labels.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)) : h("span", { class: "muted" }, "—")),
      h("td", null, n.compute === false ? h("span", { class: "muted" }, "no compute")
        : h("div", { class: "load", title: `${running} running of ${max}` },
          h("div", { class: "bar" }, h("span", { style: `width:${pct}%` })),
          h("span", { class: "mono" }, `${running}/${max || "?"}`))),
      h("td", null, (n.executors || []).map((e) => h("span", { class: "chip" }, e))),
      h("td", { class: "num" }, n.cpu ? `${n.cpu}` : "—"),
      h("td", { class: "num" }, fmtBytes(n.memory)),
      h("td", { class: "num" }, n.self ? "—" : fmtDuration(n.last_seen_s)),
      h("td", { class: "muted" }, n.version || ""));
  });
  const alive = nodes.filter((n) => (n.status || "alive") === "alive").length;
  return h("section", { id: "peers-page" },
    h("div", { class: "page-head" },
      h("div", { class: "grow" }, h("h1", null, "Peers"),
        h("div", { class: "sub" }, `${nodes.length} nodes in this node's view · ${alive} alive`))),
    h("div", { class: "panel flush" },
      table("peers", ["Node", "Status", "Labels", "Load", "Executors", "CPU#", "Memory#", "Last seen#", "Version"], rows, "no peers known yet")));
}

// --- job page -------------------------------------------------------------------------

let reloadTimer = null;
function scheduleJobReload() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => { reloadTimer = null; loadJob(); }, 300);
}

async function loadJob() {
  const current = state.job;
  if (!current) return;
  const id = encodeURIComponent(current.id);
  try {
    const view = await api(`/api/v1/jobs/${id}`);
    const [history, runs] = await Promise.all([
      api(`/api/v1/jobs/${id}/history`).catch(() => []),
      view.type === "cron" ? api(`/api/v1/jobs/${id}/runs`).catch(() => []) : Promise.resolve(null),
    ]);
    if (state.job !== current) return; // navigated away meanwhile
    Object.assign(current, { view, history, runs, error: null });
  } catch (err) {
    if (state.job !== current) return;
    current.error = err;
  }
  if (route.page === "job") render();
}

async function stopJob(id) {
  if (!confirm(`Stop job ${id}?`)) return;
  try {
    await api(`/api/v1/jobs/${encodeURIComponent(id)}/stop`, {
      method: "POST", headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ reason: "stopped from the dashboard" }),
    });
  } catch (err) {
    alert(`could not stop ${id}: ${err.message}`);
  }
  loadJob();
}

function renderJob() {
  const current = state.job;
  const back = h("a", { href: "#/jobs" }, "← all jobs");
  if (!current || (!current.view && !current.error)) {
    return h("section", { id: "job-page" }, back, h("p", { class: "muted" }, "loading…"));
  }
  if (current.error && !current.view) {
    return h("section", { id: "job-page" }, back,
      h("div", { class: "error-box", id: "job-error" }, `${current.id}: ${current.error.message}`));
  }
  const v = current.view;
  const sections = [];
  if (v.type === "dag" && v.tasks) sections.push(renderDag(v.tasks));
  if (v.type === "chain" && v.chain) sections.push(renderChain(v.chain));
  if (v.type === "cron") sections.push(renderCron(v, current.runs || []));
  if (v.partitions && v.partitions.length) sections.push(renderPartitions(v.partitions));
  return h("section", { id: "job-page", dataset: { jobId: v.job_id, state: v.state } },
    back,
    h("div", { class: "page-head" },
      h("div", { class: "grow" },
        h("h1", null, v.name || v.job_id, " ", badge(v.state)),
        h("div", { class: "sub mono" }, v.job_id)),
      TERMINAL.has(v.state) || v.owner !== ownNodeId() ? null
        : h("button", { class: "danger", id: "stop-job", onclick: () => stopJob(v.job_id) }, "Stop")),
    h("div", { class: "panel" },
      facts([
        ["Kind", v.type],
        ["Owner", h("span", { class: "mono", title: v.owner }, shortId(v.owner, 16))],
        ["Version", v.version],
        ["Submitted", fmtTime(v.submitted_at)],
        ["Started", fmtTime(v.started_at)],
        ["Finished", fmtTime(v.finished_at)],
        ["Duration", fmtDuration(v.duration_s)],
        v.parent ? ["Parent", jobLink(v.parent)] : null,
        (v.slots || []).length ? ["Slots", v.slots.length] : null,
        v.tasks && v.tasks.length ? ["Tasks", v.tasks.length] : null,
        v.desired !== undefined && v.desired !== null ? ["Live / desired", `${v.live} / ${v.desired}`] : null,
      ].filter(Boolean)),
      v.reason ? h("div", { class: "reason" }, prose(v.reason)) : null),
    sections,
    (v.slots || []).length
      ? h("div", { class: "grid2" }, h("div", null, renderSlots(v), renderExecutions(v)), renderHistory(current.history || []))
      : renderHistory(current.history || []));
}

function ownNodeId() {
  const self = state.nodes.find((n) => n.self);
  return self ? self.node_id : state.selfId;
}

// The jobs this node lists are the jobs it owns (rows carry owner; older nodes left it out).
function selfId() {
  return ownNodeId() || "";
}

function renderSlots(v) {
  const rows = (v.slots || []).map((sl) => h("tr", { class: "slot-row", dataset: { slot: sl.slot, state: sl.state } },
    h("td", { class: "num" }, sl.slot),
    h("td", null, badge(sl.state)),
    h("td", { class: "mono", title: sl.node }, shortId(sl.node, 14) || "—"),
    h("td", { class: "num" }, sl.epoch),
    h("td", { class: "num" }, sl.failures),
    h("td", { class: "muted" }, prose(sl.reason))));
  return h("div", { class: "panel flush" }, h("h2", null, "Slots"),
    table("slots", ["#", "State", "Node", "Epoch#", "Failures#", "Reason"], rows, "no slots"));
}

function renderExecutions(v) {
  const rows = [];
  for (const sl of v.slots || []) {
    for (const e of sl.executions || []) {
      rows.push(h("tr", { class: "execution-row", dataset: { executionId: e.execution_id, state: e.state } },
        h("td", { class: "mono" }, e.execution_id.replace(`${v.job_id}/`, "")),
        h("td", null, badge(e.state)),
        h("td", { class: "mono", title: e.node }, shortId(e.node, 14)),
        h("td", { class: "num" }, e.exit_code ?? "—"),
        h("td", null, fmtTime(e.started_at)),
        h("td", { class: "num" }, fmtDuration(e.duration_s)),
        h("td", { class: "muted" }, prose(e.error))));
    }
  }
  return h("div", { class: "panel flush" }, h("h2", null, "Executions"),
    table("executions", ["Execution", "State", "Node", "Exit#", "Started", "Duration#", "Error"], rows, "no executions"));
}

function historyColour(event) {
  if (/fail|lapse|lost|expired|invalid|refused/.test(event)) return "var(--s-failed)";
  if (/complete|succeed|finish|done|verified|commit/.test(event)) return "var(--s-ok)";
  if (/stop|cancel|handover|suspend/.test(event)) return "var(--s-stopped)";
  if (/start|running|grant/.test(event)) return "var(--s-running)";
  return "var(--s-queued)";
}

function renderHistory(events) {
  const items = events.map((e) => h("li", { class: "history-event", dataset: { event: e.event }, style: `--c:${historyColour(e.event)}` },
    h("span", { class: "when", title: e.at }, fmtTime(e.at)),
    h("span", { class: "what" }, e.event),
    e.slot !== null && e.slot !== undefined ? h("span", { class: "muted" }, ` · slot ${e.slot}`) : null,
    e.node ? h("span", { class: "muted mono", title: e.node }, ` · ${shortId(e.node, 10)}`) : null,
    e.detail ? h("div", { class: "detail" }, prose(typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail))) : null));
  return h("div", { class: "panel" }, h("h2", null, "History"),
    items.length ? h("div", { class: "scroll" }, h("ol", { id: "history", class: "timeline" }, items))
      : h("p", { class: "muted", id: "history" }, "no events yet"));
}

// --- kinds: DAG -------------------------------------------------------------------------

// Layered layout: a task's layer is one more than its deepest dependency;
// inside a layer tasks are ordered by the mean row of their dependencies
// (fewer crossing edges), then by name.
function layoutDag(tasks) {
  const byName = new Map(tasks.map((t) => [t.task, t]));
  const layer = new Map();
  const depth = (name, seen) => {
    if (layer.has(name)) return layer.get(name);
    if (seen.has(name)) return 0; // a cycle cannot be submitted; stay safe anyway
    seen.add(name);
    const deps = (byName.get(name).depends_on || []).filter((d) => byName.has(d));
    const value = deps.length ? 1 + Math.max(...deps.map((d) => depth(d, seen))) : 0;
    layer.set(name, value);
    return value;
  };
  tasks.forEach((t) => depth(t.task, new Set()));
  const layers = [];
  for (const t of tasks) (layers[layer.get(t.task)] ||= []).push(t.task);
  const row = new Map();
  layers.forEach((names) => {
    const key = (n) => {
      const deps = (byName.get(n).depends_on || []).filter((d) => row.has(d));
      return deps.length ? deps.reduce((a, d) => a + row.get(d), 0) / deps.length : -1;
    };
    names.sort((a, b) => key(a) - key(b) || a.localeCompare(b));
    names.forEach((n, i) => row.set(n, i));
  });
  return { layers, layer, row };
}

function renderDag(tasks) {
  const W = 170, H = 58, GX = 70, GY = 22, PAD = 12;
  const { layers, layer, row } = layoutDag(tasks);
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const edges = tasks.flatMap((t) => (t.depends_on || []).filter((d) => layer.has(d)).map((d) => [d, t.task]));
  // An edge that skips layers runs in its own lane above the boxes, not through them.
  const long = edges.filter(([a, b]) => layer.get(b) - layer.get(a) > 1);
  const LANE = long.length ? 10 + long.length * 8 : 0;
  const width = PAD * 2 + layers.length * W + (layers.length - 1) * GX;
  const height = PAD * 2 + LANE + tallest * H + (tallest - 1) * GY;
  const pos = (name) => {
    const count = layers[layer.get(name)].length;
    const offset = ((tallest - count) * (H + GY)) / 2; // centre short layers
    return { x: PAD + layer.get(name) * (W + GX), y: PAD + LANE + offset + row.get(name) * (H + GY) };
  };
  const svg = s("svg", { id: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "task graph" });
  svg.append(s("defs", null, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
    s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#b4bfd0" }))));
  for (const [dep, name] of edges) {
    const a = pos(dep), b = pos(name);
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
    const lane = long.indexOf(long.find(([p, q]) => p === dep && q === name));
    let d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
    if (lane >= 0) {
      const y = PAD + 4 + lane * 8, h1 = x1 + GX / 2, h2 = x2 - GX / 2;
      d = `M ${x1} ${y1} C ${h1} ${y1}, ${h1} ${y}, ${x1 + GX} ${y} L ${x2 - GX} ${y} C ${h2} ${y}, ${h2} ${y2}, ${x2} ${y2}`;
    }
    svg.append(s("path", { class: "edge", d, "marker-end": "url(#arrow)", dataset: { from: dep, to: name } }));
  }
  for (const t of tasks) {
    const p = pos(t.task);
    const runs = (t.runs || []).length;
    const g = s("g", { class: `dag-task st-${cssName(t.state)}`, transform: `translate(${p.x},${p.y})`, dataset: { task: t.task, state: t.state } },
      s("title", null, `${t.task}: ${t.state}${t.reason ? ` (${t.reason})` : ""}`),
      s("rect", { width: W, height: H, rx: 9 }),
      s("rect", { class: "stripe", width: 6, height: H - 2, x: 1, y: 1, rx: 3 }),
      s("text", { class: "name", x: 16, y: 23 }, t.task.length > 20 ? `${t.task.slice(0, 19)}…` : t.task),
      s("text", { class: "state", x: 16, y: 43 }, t.state),
      runs > 1 ? s("text", { class: "runs", x: W - 10, y: 43, "text-anchor": "end" }, `${runs} runs`) : null);
    svg.append(g);
  }
  const seen = [...new Set(tasks.map((t) => t.state))];
  // The same tasks as rows: their runs (a mapped task has one per item) and why.
  const rows = tasks.map((t) => h("tr", { class: "dag-task-row", dataset: { task: t.task, state: t.state } },
    h("td", null, t.task),
    h("td", null, badge(t.state)),
    h("td", null, (t.depends_on || []).join(", ") || h("span", { class: "muted" }, "—")),
    h("td", null, (t.runs || []).map((r) => r.run_id ? h("span", { class: "chip" }, jobLink(r.run_id, r.state)) : null)),
    h("td", { class: "muted" }, prose(t.reason))));
  return h("div", { class: "panel flush" }, h("h2", null, `Tasks (${tasks.length})`),
    h("div", { class: "dag-wrap", style: "padding: 0 18px" }, svg),
    h("div", { class: "legend", style: "padding: 0 18px 12px" }, seen.map((st) => h("span", { class: `st-${cssName(st)}` }, st))),
    table("dag-tasks", ["Task", "State", "After", "Runs", "Reason"], rows));
}

// --- kinds: chain, cron, stream ----------------------------------------------------------

function verifiedOf(record, chain) {
  const text = record.verified || chain.log_verified || "";
  return text === "ok" ? "ok" : "invalid";
}

function renderChain(chain) {
  const rows = (chain.records || []).map((r) => {
    const verified = verifiedOf(r, chain);
    return h("tr", { class: "chain-record", dataset: { verified, seq: r.seq } },
      h("td", { class: "num" }, r.seq),
      h("td", null, r.kind),
      h("td", null, r.stage),
      h("td", { class: "mono", title: r.from }, shortId(r.from, 12) || "—"),
      h("td", { class: "mono", title: r.to }, shortId(r.to, 12)),
      h("td", { class: "mono", title: r.hash }, shortId(r.hash, 12)),
      h("td", null, (r.signed_by || []).length),
      h("td", { class: `verified-${verified}`, title: r.verified || chain.log_verified }, verified === "ok" ? "✔ ok" : `✘ ${r.verified || chain.log_verified}`));
  });
  return h("div", { class: "panel flush" }, h("h2", null, "Handover log"),
    h("div", { style: "padding: 0 18px 12px" }, facts([
      ["Stage", chain.stage],
      ["Stage owner", h("span", { class: "mono", title: chain.owner }, shortId(chain.owner, 16))],
      ["This node's role", chain.role],
      ["Log", h("span", { class: chain.log_verified === "ok" ? "verified-ok" : "verified-invalid", id: "chain-verified" }, chain.log_verified)],
    ])),
    table("chain-records", ["Seq#", "Kind", "Stage", "From", "To", "Hash", "Sigs", "Verified"], rows, "no records yet"));
}

function renderCron(v, runs) {
  const sched = v.schedule || {};
  const rows = [...runs].reverse().map((r) => h("tr", { class: "cron-run", dataset: { outcome: r.outcome, runId: r.run_id || "" } },
    h("td", null, fmtTime(r.scheduled)),
    h("td", null, r.run_id ? jobLink(r.run_id, r.run_id) : h("span", { class: "muted" }, "—")),
    h("td", null, badge(r.outcome)),
    h("td", { class: "num" }, (r.executions || []).length),
    h("td", { class: "muted" }, prose(r.reason))));
  return h("div", { class: "panel flush" }, h("h2", null, "Cron runs"),
    h("div", { style: "padding: 0 18px 12px" }, facts([
      ["Next", fmtMs(sched.next_ms)],
      ["Last scheduled", fmtMs(sched.last_scheduled_ms)],
      ["Overlap", sched.overlap],
      ["Suspended", sched.suspended ? "yes" : "no"],
    ])),
    table("cron-runs", ["Scheduled", "Run", "Outcome", "Executions#", "Reason"], rows, "no runs yet"));
}

function renderPartitions(partitions) {
  const consumer = partitions.some((p) => "holder" in p);
  const rows = partitions.map((p) => h("tr", { class: "partition-row", dataset: { partition: p.partition, state: p.state || "" } },
    h("td", { class: "mono" }, p.partition),
    consumer ? h("td", null, badge(p.state)) : h("td", null, (p.streams || []).join(", ")),
    consumer ? h("td", { class: "mono", title: p.holder }, shortId(p.holder, 12) || "—") : h("td", { class: "num" }, p.batches ?? "—"),
    h("td", { class: "mono" }, p.checkpoint || "—"),
    consumer ? h("td", { class: "num" }, p.lag ?? "—") : h("td", { class: "mono" }, p.position || "—")));
  const headers = consumer ? ["Partition", "State", "Holder", "Checkpoint", "Lag#"] : ["Partition", "Streams", "Batches#", "Checkpoint", "Position"];
  return h("div", { class: "panel flush" }, h("h2", null, "Partitions"), table("partitions", headers, rows));
}

// --- start ----------------------------------------------------------------------------

window.addEventListener("hashchange", onRoute);
onRoute();
loadOnce();
connect();
