// The dashboard page: the processes table (live from /api/events), one process's record with its actions,
// the task queues. Plain DOM, no build step; every value is inserted as text, never as HTML.
"use strict";

const TERMINAL = ["finished", "excepted", "killed"];
// a page is at most `limit` rows and the workers' byte budget: `next` is the cursor of the next page, `back`
// the cursors (and first rows) of the pages before this one
// the filter (states, class, label, sort, reverse, page size, cursor) lives in the URL's hash: reload, back and a
// shared link keep it
const view = { offset: 0, limit: 100, states: [], cls: "", label: "", sort: "", reverse: false, rows: new Map(),
  pid: null, info: null, cursor: null, next: null, shown: 0, back: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

// -- the API ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(body, status) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.errorType = body && body.error_type ? body.error_type : `HTTP${status}`;
    this.status = status;
  }
}

// the token travels once, to /api/login, which answers with an HttpOnly SameSite=Strict session cookie: no script
// (and no other site) can read or send it, and the token is kept nowhere in the page
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) $("login").hidden = false;
  if (!response.ok) throw new ApiError(body, response.status);
  return body;
}

async function login(event) {
  event.preventDefault();
  const token = $("token");
  try {
    const answer = await api("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token.value }),
    });
    token.value = "";
    $("login").hidden = true; $("login-error").textContent = "";
    $("role").textContent = answer.role === "read" ? "read-only" : "";
    await loadInfo(); route(); connectEvents();
  } catch (error) {
    token.value = "";
    $("login-error").textContent = `${error.errorType}: ${error.message}`;
  }
}

function showError(node, error) {
  node.hidden = !error;
  node.textContent = error ? `${error.errorType || "Error"}: ${error.message}` : "";
}

// -- cells -----------------------------------------------------------------------------------------
function age(ctime) {
  if (typeof ctime !== "number") return "-";
  let seconds = Math.max(0, Date.now() / 1000 - ctime);
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return `${Math.floor(seconds / size)}${unit}`;
  }
  return `${Math.floor(seconds)}s`;
}

function when(stamp) {
  return typeof stamp === "number" ? new Date(stamp * 1000).toLocaleString() : "-";
}

function worker(host) {
  return host && host.hostname ? `${host.hostname}:${host.pid ?? "?"}` : "-";
}

function progressText(progress) {
  if (!progress || typeof progress !== "object") return "";
  return Object.entries(progress).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}

function fraction(progress, state) {
  if (state === "finished") return 1;
  if (!progress || typeof progress !== "object") return null;
  if (typeof progress.fraction === "number") return progress.fraction;
  if (typeof progress.percent === "number") return progress.percent / 100;
  for (const [part, whole] of [["done", "of"], ["done", "total"], ["step", "steps"], ["current", "total"]]) {
    if (typeof progress[part] === "number" && typeof progress[whole] === "number" && progress[whole] > 0) {
      return progress[part] / progress[whole];
    }
  }
  return null;
}

function progressCell(td, progress, state) {
  td.replaceChildren();
  const share = fraction(progress, state);
  if (share !== null) {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.round(Math.min(1, Math.max(0, share)) * 100)}%`;
    td.append(el("div", { class: "bar", role: "progressbar", "aria-valuenow": Math.round(share * 100) }, fill));
  }
  td.append(el("span", { class: "muted" }, progressText(progress) || (share === null ? "-" : "")));
}

function stateBadge(state, paused) {
  const badge = el("span", { class: `badge state-${state || "unknown"}` }, state || "-");
  return paused && !TERMINAL.includes(state) ? [badge, el("span", { class: "badge paused" }, "paused")] : [badge];
}

// -- the processes table ---------------------------------------------------------------------------
function renderRow(p) {
  const pid = String(p.pid);
  const tr = el("tr", { "data-pid": pid, "data-state": p.state_name || "" });
  tr.append(
    el("td", { class: "pid" }, el("a", { href: `#/process/${encodeURIComponent(pid)}` }, pid)),
    el("td", { class: "cls" }, p.class || "-"),
    el("td", { class: "state" }, ...stateBadge(p.state_name, p.paused)),
    el("td", { class: "paused" }, p.paused ? "yes" : "no"),
    el("td", { class: "progress" }),
    el("td", { class: "worker" }, worker(p.host)),
    el("td", { class: "age", "data-ctime": p.ctime ?? "" }, age(p.ctime)),
    el("td", { class: "label" }, p.label ?? ""),
    el("td", { class: "error", title: p.error ?? "" }, p.error ?? ""),
  );
  tr.summary = p;
  progressCell(tr.querySelector(".progress"), p.progress, p.state_name);
  return tr;
}

async function loadList() {
  const query = new URLSearchParams({ limit: view.limit });
  if (view.cursor) query.set("cursor", view.cursor);
  for (const state of view.states) query.append("state", state);
  if (view.cls) query.set("class", view.cls);
  if (view.label) query.set("label", view.label);
  if (view.sort) query.set("sort", view.sort);
  if (view.reverse) query.set("reverse", "1");
  try {
    const page = await api(`/api/processes?${query}`);
    const body = $("processes").tBodies[0];
    view.rows = new Map();
    const rows = page.processes.map((p) => { const tr = renderRow(p); view.rows.set(String(p.pid), tr); return tr; });
    body.replaceChildren(...rows);
    $("empty").hidden = rows.length > 0 || view.offset > 0;
    $("page-info").textContent = rows.length ? `rows ${view.offset + 1}–${view.offset + rows.length}` : "no rows";
    $("prev").disabled = view.offset === 0;
    view.next = page.next; view.shown = rows.length;
    $("next").disabled = !page.next;
    $("list-source").hidden = page.source !== "store";
    $("list-source").textContent = page.source === "store" ? `From the store: ${page.source_reason}` : "";
    showError($("list-error"), null);
  } catch (error) {
    showError($("list-error"), error);
  }
}

let refreshTimer = null;
function scheduleRefresh() {  // many new processes at once: one listing, not one per event
  if (refreshTimer === null) refreshTimer = setTimeout(() => { refreshTimer = null; loadList(); }, 250);
}

function onState(event) {
  const tr = view.rows.get(event.pid);
  if (tr) {
    const summary = { ...tr.summary, state_name: event.to };
    if (TERMINAL.includes(event.to)) summary.paused = false;
    tr.summary = summary;
    tr.dataset.state = event.to;
    tr.querySelector(".state").replaceChildren(...stateBadge(event.to, summary.paused));
    tr.querySelector(".paused").textContent = summary.paused ? "yes" : "no";
    progressCell(tr.querySelector(".progress"), summary.progress, event.to);
    tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
  } else if (view.offset === 0 && (!view.states.length || view.states.includes(event.to))) {
    scheduleRefresh();  // a new process (or one now matching the filter): fetch its summary with the page
  }
  if (view.pid === event.pid) scheduleRecord();
}

function onAction(event) {
  const tr = view.rows.get(event.pid);
  if (tr && event.result && (event.action === "pause" || event.action === "play")) {
    tr.summary = { ...tr.summary, paused: event.action === "pause" };
    tr.querySelector(".paused").textContent = tr.summary.paused ? "yes" : "no";
    tr.querySelector(".state").replaceChildren(...stateBadge(tr.summary.state_name, tr.summary.paused));
  }
  if (view.pid === event.pid) scheduleRecord();
}

function connectEvents() {
  if (events) events.close();
  const source = events = new EventSource("/api/events");
  const live = $("live");
  source.addEventListener("hello", () => {
    live.textContent = "live"; live.className = "badge on";
    scheduleRefresh();  // (re)connected: catch up on what happened while away
  });
  source.addEventListener("state", (message) => onState(JSON.parse(message.data)));
  source.addEventListener("action", (message) => onAction(JSON.parse(message.data)));
  source.addEventListener("lagged", scheduleRefresh);
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "badge off"; };
}

// -- one process -----------------------------------------------------------------------------------
let recordTimer = null;
function scheduleRecord() {
  if (recordTimer === null) recordTimer = setTimeout(() => { recordTimer = null; if (view.pid) loadProcess(view.pid); }, 200);
}

function fact(dl, name, value) {
  dl.append(el("dt", {}, name), el("dd", { "data-fact": name }, value));
}

async function loadProcess(pid) {
  $("p-pid").textContent = pid;
  try {
    const r = await api(`/api/processes/${encodeURIComponent(pid)}`);
    if (view.pid !== pid) return;
    const dl = $("p-facts");
    dl.replaceChildren();
    fact(dl, "class", r.class || "-");
    fact(dl, "state", r.state_name || "-");
    fact(dl, "paused", r.paused ? "yes" : "no");
    fact(dl, "status", r.status ?? "-");
    fact(dl, "worker", `${worker(r.host)}${r.live ? "" : " (not running)"}`);
    fact(dl, "created", when(r.ctime));
    fact(dl, "modified", when(r.mtime));
    if (r.source === "store") fact(dl, "source", `the store: ${r.source_reason}`);
    $("p-progress").textContent = JSON.stringify(r.progress || {}, null, 2);
    $("p-history").tBodies[0].replaceChildren(...(r.history || []).map((h) =>
      el("tr", {}, el("td", {}, when(h.time)), el("td", {}, h.event ?? ""), el("td", {}, h.message ?? ""))));
    $("p-inputs").textContent = JSON.stringify(r.inputs ?? {}, null, 2);
    $("p-outputs").textContent = r.state_name === "finished" ? JSON.stringify(r.outputs ?? {}, null, 2) : "-";
    const exc = r.exception;
    $("p-exception-box").hidden = !exc;
    $("p-exception").textContent = exc ? `${exc.type}: ${exc.message}\n\n${exc.traceback || ""}` : "";
    const lines = (r.log || []).map((l) => `${when(l.time)} ${l.level}: ${l.text}`);
    if (r.log_dropped) lines.unshift(`(${r.log_dropped} older line(s) dropped)`);
    $("p-log").textContent = lines.join("\n") || "-";
    const ended = TERMINAL.includes(r.state_name);
    for (const id of ["do-pause", "do-play", "do-kill"]) $(id).disabled = ended;
    $("p-record").hidden = false;
    showError($("p-error"), null);
  } catch (error) {
    if (view.pid !== pid) return;
    $("p-record").hidden = true;
    showError($("p-error"), error);
  }
}

async function act(action, body = {}) {
  const answer = $("answer");
  answer.className = "pending"; answer.textContent = `${action}…`;
  try {
    const result = await api(`/api/processes/${encodeURIComponent(view.pid)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    answer.className = "ok"; answer.textContent = `${action}: ${result.result}`;
  } catch (error) {
    answer.className = "error"; answer.textContent = `${action} failed: ${error.errorType}: ${error.message}`;
  }
  scheduleRecord();
}

// -- queues and workers ----------------------------------------------------------------------------
async function loadQueues() {
  try {
    const q = await api("/api/queues");
    $("queues").tBodies[0].replaceChildren(...q.queues.map((row) => el("tr", { "data-queue": row.queue },
      el("td", {}, row.queue), el("td", {}, row.exists ? "yes" : "no"),
      el("td", { class: "messages" }, row.messages), el("td", { class: "consumers" }, row.consumers))));
    const workers = q.workers.rows || [];
    $("workers-table").tBodies[0].replaceChildren(...workers.map((w) => el("tr", { "data-worker": w.worker ?? "" },
      el("td", {}, w.worker ?? "-"), el("td", {}, w.host ?? "-"), el("td", {}, w.pid ?? "-"),
      el("td", {}, typeof w.uptime === "number" ? age(Date.now() / 1000 - w.uptime) : "-"),
      el("td", {}, w.processes ?? "-"), el("td", {}, w.consuming ? "yes" : "no"),
      el("td", { class: "slots" }, Object.entries(w.slots || {}).map(([queue, s]) =>
        `${queue}: ${s.used ?? "?"} / ${s.total ?? "no limit"}`).join("; ") || "-"))));
    $("workers-table").hidden = !q.workers.available;
    const note = q.workers.available
      ? (workers.length ? "" : `No worker answered within ${q.workers.within} s.`)
      : q.workers.reason;
    $("workers").hidden = !note;
    $("workers").textContent = note;
    showError($("q-error"), null);
  } catch (error) {
    showError($("q-error"), error);
  }
}

// a kill cannot be undone: ask first, in a modal dialog (Cancel, Escape and a click on Cancel do nothing)
function confirmKill() {
  const dialog = $("confirm-kill");
  $("confirm-pid").textContent = view.pid; $("kill-message").value = "";
  dialog.returnValue = "";
  dialog.showModal();
}

function onKillDialogClose() {
  if ($("confirm-kill").returnValue !== "kill") return;
  const message = $("kill-message").value.trim();
  act("kill", message ? { message } : {});
}

// -- the filter in the URL: #/?state=running&state=waiting&class=...&label=...&sort=mtime&reverse=1&limit=25&cursor=...
function filterFromHash(hash) {
  const query = new URLSearchParams(hash.startsWith("#/?") ? hash.slice(3) : "");
  const limit = Number(query.get("limit"));
  view.states = query.getAll("state").filter(Boolean);
  view.cls = query.get("class") || ""; view.label = query.get("label") || "";
  view.sort = query.get("sort") || ""; view.reverse = query.get("reverse") === "1";
  view.limit = [25, 100, 500].includes(limit) ? limit : 100;
  const cursor = query.get("cursor") || null;
  if (cursor !== view.cursor) {  // a page the buttons did not reach (a reload, a shared link): count from it
    const at = Number(query.get("at"));
    view.offset = cursor && Number.isInteger(at) && at > 0 ? at : 0;
    if (!cursor) view.back = [];
  }
  view.cursor = cursor;
  for (const option of $("filter-state").options) option.selected = view.states.includes(option.value);
  $("filter-class").value = view.cls; $("filter-label").value = view.label;
  $("sort").value = view.sort; $("reverse").checked = view.reverse; $("page-size").value = String(view.limit);
}

function hashOf(cursor = null, at = 0) {
  const query = new URLSearchParams();
  for (const state of view.states) query.append("state", state);
  for (const [key, value] of [["class", view.cls], ["label", view.label], ["sort", view.sort]]) {
    if (value) query.set(key, value);
  }
  if (view.reverse) query.set("reverse", "1");
  if (view.limit !== 100) query.set("limit", view.limit);
  if (cursor) { query.set("cursor", cursor); query.set("at", at); }
  const text = query.toString();
  return text ? `#/?${text}` : "#/";
}

// -- routing ---------------------------------------------------------------------------------------
let queueTimer = null;
function route() {
  const hash = location.hash || "#/";
  const processMatch = hash.match(/^#\/process\/(.+)$/);
  view.pid = processMatch ? decodeURIComponent(processMatch[1]) : null;
  $("processes-view").hidden = Boolean(view.pid) || hash === "#/queues";
  $("process-view").hidden = !view.pid;
  $("queues-view").hidden = hash !== "#/queues";
  $("nav-processes").classList.toggle("current", !$("processes-view").hidden);
  $("nav-queues").classList.toggle("current", hash === "#/queues");
  clearInterval(queueTimer);
  if (view.pid) {
    $("answer").textContent = ""; $("p-record").hidden = true;
    loadProcess(view.pid);
  } else if (hash === "#/queues") {
    loadQueues(); queueTimer = setInterval(loadQueues, 5000);
  } else {
    filterFromHash(hash);
    loadList();
  }
}

async function loadInfo() {
  try {
    view.info = await api("/api/info");
    $("broker").textContent = `${view.info.broker} · queue ${view.info.task_queue}`;
    $("role").textContent = view.info.role === "read" ? "read-only" : "";
    for (const id of ["do-pause", "do-play", "do-kill"]) $(id).hidden = view.info.role === "read";
    $("login").hidden = !(view.info.actions_need_token && view.info.role !== "act");  // log in to act
    return true;
  } catch (error) {
    $("broker").textContent = `${error.errorType}: ${error.message}`;
    return false;
  }
}

let events = null;
async function start() {
  const readable = await loadInfo();
  $("login").addEventListener("submit", login);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    view.states = [...$("filter-state").selectedOptions].map((o) => o.value).filter(Boolean);
    view.cls = $("filter-class").value.trim(); view.label = $("filter-label").value.trim();
    view.sort = $("sort").value; view.reverse = $("reverse").checked;
    view.limit = Number($("page-size").value); view.offset = 0; view.cursor = null; view.back = [];
    const hash = hashOf();
    if (location.hash === hash) loadList(); else location.hash = hash;  // the hashchange loads the list
  });
  $("prev").addEventListener("click", () => {
    const before = view.back.pop() || { cursor: null, offset: 0 };
    view.offset = before.offset; view.cursor = before.cursor;
    location.hash = hashOf(before.cursor, before.offset);
  });
  $("next").addEventListener("click", () => {
    if (!view.next) return;
    view.back.push({ cursor: view.cursor, offset: view.offset });
    view.offset += view.shown; view.cursor = view.next;
    location.hash = hashOf(view.next, view.offset);
  });
  $("do-pause").addEventListener("click", () => act("pause"));
  $("do-play").addEventListener("click", () => act("play"));
  $("do-kill").addEventListener("click", confirmKill);
  $("confirm-kill").addEventListener("close", onKillDialogClose);
  setInterval(() => {
    for (const td of document.querySelectorAll("td.age")) td.textContent = age(Number(td.dataset.ctime) || null);
  }, 5000);
  window.addEventListener("hashchange", route);
  if (!readable) return;  // the login form is shown: it routes and connects once logged in
  route();
  connectEvents();
}

document.addEventListener("DOMContentLoaded", start);
