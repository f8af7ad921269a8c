// The dashboard: polls /api/* every few seconds, follows /api/tail with server-sent events.
"use strict";
const REFRESH_MS = 5000;
const TAIL_MAX = 300;
const $ = id => document.getElementById(id);

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, render) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...items.map(item => { const tr = document.createElement("tr"); render(tr, item); return tr; }));
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

async function getJson(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function refreshOverview() {
  const data = await getJson("/api/overview");
  const pipeline = data.pipeline;
  $("redis-state").textContent = pipeline.redis_up ? "redis up" : "redis down";
  $("redis-state").className = "pill " + (pipeline.redis_up ? "ok" : "bad");
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  const axis = {firstTs: data.first_bucket_ts, stepS: data.bucket_s};
  lineChart($("chart-events"), data.event_rates, axis);
  lineChart($("chart-ttft"), data.models.flatMap(m => [
    {name: `${m.model} p50`, values: m.ttft_p50_ms},
    {name: `${m.model} p95`, values: m.ttft_p95_ms, dashed: true},
  ]), axis);
  lineChart($("chart-tokens"), data.models.map(m => ({name: m.model, values: m.tokens_per_s})), axis);
  fillTable("engines-table", data.engines, (tr, e) => {
    cell(tr, e.service); cell(tr, e.host);
    cell(tr, e.status, e.age_s > 30 ? "error" : "");
    cell(tr, `${e.models_loaded}${e.models.length ? " (" + e.models.join(", ") + ")" : ""}`);
    cell(tr, e.active_tasks); cell(tr, e.memory_gb === null ? "" : `${e.memory_gb.toFixed(2)} GB`);
    cell(tr, ago(e.age_s), e.age_s > 30 ? "error" : "");
  });
  fillTable("collectors-table", pipeline.collectors, (tr, c) => {
    cell(tr, c.consumer); cell(tr, c.status); cell(tr, c.heartbeat_age_s === null ? "this process" : ago(c.heartbeat_age_s));
    cell(tr, c.read); cell(tr, c.acked); cell(tr, c.dead_lettered);
  });
  const streamRows = pipeline.streams.flatMap(s => s.groups.length
    ? s.groups.map(g => ({stream: s.stream, length: s.length, ...g}))
    : [{stream: s.stream, length: s.length}]);
  fillTable("streams-table", streamRows, (tr, s) => {
    cell(tr, s.stream); cell(tr, s.length); cell(tr, s.group); cell(tr, s.lag); cell(tr, s.pending); cell(tr, s.consumers);
  });
}

async function refreshErrors() {
  const groups = await getJson("/api/errors");
  fillTable("errors-table", groups, (tr, g) => {
    tr.dataset.fingerprint = g.fingerprint;
    cell(tr, g.count); cell(tr, g.error_type); cell(tr, g.message, "error"); cell(tr, g.services.join(", "));
    cell(tr, g.first_seen); cell(tr, g.last_seen);
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = g.request_id ? `request ${g.request_id}` : `event ${g.sample_id.slice(0, 8)}`;
    const stack = document.createElement("pre");
    stack.className = "stack";
    stack.textContent = g.stack || "(no stack)";
    const open = document.createElement("a");
    open.href = "#timeline-form";
    open.textContent = "timeline";
    open.onclick = () => showTimeline(g.request_id || g.trace_id);
    details.append(summary, open, stack);
    cell(tr, details);
  });
}

async function refreshAlerts() {
  const data = await getJson("/api/alerts");
  fillTable("alerts-table", data.current, (tr, a) => {
    tr.className = a.status;
    cell(tr, a.silenced_by ? `${a.status} (silenced by ${a.silenced_by})` : a.status);
    cell(tr, a.rule); cell(tr, a.summary); cell(tr, a.starts_at); cell(tr, a.ends_at);
  });
  fillTable("silences-table", data.silences, (tr, s) => {
    cell(tr, s.id); cell(tr, s.matchers); cell(tr, new Date(s.ends_at * 1000).toISOString());
    cell(tr, s.created_by); cell(tr, s.comment);
  });
  $("alerts-recent").replaceChildren(...data.recent.map(r => {
    const li = document.createElement("li");
    li.textContent = `${r.at} ${r.status} ${r.rule}: ${r.summary}`;
    return li;
  }));
}

function details(event) {
  const skip = new Set(["v", "id", "ts", "type", "service", "host", "pid", "severity", "trace_id", "span_id",
                        "parent_span_id", "stream", "stream_id", "offset_ms", "delta_ms", "handoff_from", "gap", "attrs"]);
  const parts = Object.entries(event).filter(([k, v]) => !skip.has(k) && v !== null && typeof v !== "object")
    .map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(3) : v}`);
  for (const [k, v] of Object.entries(event.attrs || {})) parts.push(`${k}=${v}`);
  return parts.join(" ");
}

async function showTimeline(id) {
  if (!id) return;
  $("timeline-input").value = id;
  const data = await getJson("/api/timeline?id=" + encodeURIComponent(id));
  $("timeline-summary").textContent = data.events.length
    ? `${data.events.length} events over ${data.duration_ms.toFixed(1)} ms, services ${data.services.join(" → ")}, ${data.gaps} gap(s) over ${data.gap_threshold_ms} ms`
    : `no event carries ${id}`;
  fillTable("timeline-table", data.events, (tr, e) => {
    tr.className = (e.gap ? "gap " : "") + (e.severity === "error" || e.severity === "critical" ? "error" : "");
    tr.dataset.id = e.id;
    cell(tr, `+${e.offset_ms.toFixed(1)} ms`); cell(tr, `${e.delta_ms.toFixed(1)} ms`);
    cell(tr, e.handoff_from ? `${e.handoff_from} → ${e.service}` : e.service);
    cell(tr, e.type); cell(tr, e.severity); cell(tr, details(e));
  });
}

let tailSource = null;
function startTail() {
  if (tailSource) tailSource.close();
  const query = new URLSearchParams();
  if ($("tail-service").value) query.set("service", $("tail-service").value);
  if ($("tail-type").value) query.set("type", $("tail-type").value);
  if ($("tail-severity").value) query.set("severity", $("tail-severity").value);
  if ($("tail-request").value) query.set("request_id", $("tail-request").value);
  if ($("tail-live").checked) query.set("live", "1");
  tailSource = new EventSource("/api/tail?" + query);
  tailSource.onopen = () => { $("tail-state").textContent = "following"; };
  tailSource.onerror = () => { $("tail-state").textContent = "reconnecting…"; };
  tailSource.onmessage = message => {
    const event = JSON.parse(message.data);
    const li = document.createElement("li");
    li.dataset.id = event.id;
    li.dataset.type = event.type;
    li.className = event.stream === "live" ? "live" : (event.severity === "error" || event.severity === "critical" ? "error" : "");
    const when = new Date(event.ts / 1e6).toISOString().slice(11, 23);
    const ids = [event.request_id && `req=${event.request_id}`, event.trace_id && `trace=${event.trace_id.slice(0, 8)}`].filter(Boolean).join(" ");
    li.textContent = `${when} ${event.severity.padEnd(5)} ${event.service.padEnd(14)} ${event.type.padEnd(22)} ${ids} ${details(event)}`;
    if (event.request_id) li.onclick = () => showTimeline(event.request_id);
    const list = $("tail-list");
    list.prepend(li);
    while (list.children.length > TAIL_MAX) list.lastChild.remove();
  };
}

function every(task) {
  const run = () => task().catch(error => { $("updated").textContent = String(error); });
  run();
  setInterval(run, REFRESH_MS);
}

$("timeline-form").onsubmit = event => { event.preventDefault(); showTimeline($("timeline-input").value.trim()); };
$("tail-form").onsubmit = event => { event.preventDefault(); startTail(); };
every(refreshOverview);
every(refreshErrors);
every(refreshAlerts);
startTail();
