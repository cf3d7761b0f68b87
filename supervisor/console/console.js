// The circles supervisor console: a client of the supervisor's JSON-RPC API
// over one WebSocket to the server that served this page. It can do nothing
// the API cannot. Plain modern JavaScript, no library, no build step; every
// value from the server reaches the page as text (textContent), never as
// markup.

const SECRET_KEY = "circles.supervisor.secret";
const WS_PROTOCOL = "circles.jsonrpc";
const WS_BEARER_PREFIX = "circles.bearer.";
const UNAUTHORIZED = -32014;
const POLL_MS = 1000;
const STATUS_MS = 5000;
const HISTORY_MS = 5 * 60 * 1000;
const MIN_CHART_MS = 60 * 1000;
const CALL_TIMEOUT_MS = 120_000;
const MAX_LOG_LINES = 1000;
const TAIL_LINES = 200;
const RECONNECT_MAX_MS = 10_000;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c);
  return node;
}

const svgNs = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.setAttribute("class", v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  return node;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A JSON-RPC error answered by the server (or a transport failure). */
class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

/** base64url without padding, as the server's bearer subprotocol wants. */
function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** One WebSocket to the supervisor: calls, and subscriptions' notifications. */
class Rpc {
  constructor(secret, onClose) {
    this.secret = secret;
    this.onClose = onClose;
    this.nextId = 1;
    this.pending = new Map();
    this.subscriptions = new Map();
    this.socket = null;
    this.closedByUs = false;
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const protocols = [WS_PROTOCOL];
    if (this.secret) protocols.push(WS_BEARER_PREFIX + base64url(this.secret));
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(`${scheme}://${location.host}/`, protocols);
      this.socket = socket;
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        resolve();
      });
      socket.addEventListener("message", (ev) => this.receive(ev.data));
      socket.addEventListener("close", () => {
        for (const { reject: fail, timer } of this.pending.values()) {
          clearTimeout(timer);
          fail(new RpcError(0, "the connection to the supervisor closed"));
        }
        this.pending.clear();
        this.subscriptions.clear();
        if (!opened) reject(new RpcError(0, "cannot reach the supervisor"));
        else if (!this.closedByUs) this.onClose();
      });
    });
  }

  receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.id !== undefined && msg.id !== null && this.pending.has(msg.id)) {
      const { resolve, reject, timer, onResult } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      clearTimeout(timer);
      if (msg.error) {
        reject(new RpcError(msg.error.code, msg.error.message, msg.error.data));
      } else {
        if (onResult) onResult(msg.result);
        resolve(msg.result);
      }
      return;
    }
    if (msg.method && msg.params && this.subscriptions.has(msg.params.subscription)) {
      this.subscriptions.get(msg.params.subscription)(msg.params.result);
    }
  }

  call(method, params = {}, timeoutMs = CALL_TIMEOUT_MS, onResult = null) {
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
        reject(new RpcError(0, "not connected to the supervisor"));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError(0, `${method}: no answer within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, onResult });
      this.socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  /** Subscribes; `handler` gets every notification, from the first on. */
  subscribe(method, params, handler) {
    // The handler is registered as the answer is read, before any
    // notification of the subscription can be.
    return this.call(method, params, CALL_TIMEOUT_MS, (id) => this.subscriptions.set(id, handler));
  }

  unsubscribe(method, id) {
    this.subscriptions.delete(id);
    return this.call(method, [id]).catch(() => {});
  }

  close() {
    this.closedByUs = true;
    if (this.socket) this.socket.close();
  }
}

// ----- formatting ---------------------------------------------------------

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return "—";
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
  return `${Math.floor(secs / 86400)}d ${Math.floor((secs % 86400) / 3600)}h`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function fmtExit(info) {
  const e = info.last_exit;
  let text = "—";
  if (e && e.code !== undefined) text = `code ${e.code}`;
  else if (e && e.signal !== undefined) text = `signal ${e.signal}`;
  if (info.reason) text = text === "—" ? info.reason : `${text}: ${info.reason}`;
  return text;
}

function heartbeatAge(info) {
  if (!info.heartbeat_at) return "—";
  const age = Math.max(0, Math.round((Date.now() - Date.parse(info.heartbeat_at)) / 1000));
  return `${age}s ago`;
}

function shortKey(key) {
  return key.length > 14 ? `${key.slice(0, 8)}…${key.slice(-4)}` : key;
}

// ----- state --------------------------------------------------------------

const app = {
  rpc: null,
  secret: null,
  scope: null,
  secretsConfigured: false,
  generation: 0,
  runners: new Map(),
  rows: new Map(),
  history: new Map(),
  rates: new Map(),
  log: { runner: "", sub: null, generation: 0 },
  reconnectDelay: 1000,
};

const isAdmin = () => app.scope === "admin";

function toast(message, failed = false) {
  const note = el("div", { class: failed ? "failed" : "", role: failed ? "alert" : null, text: message });
  $("toast").append(note);
  setTimeout(() => note.remove(), failed ? 8000 : 4000);
}

function setConnection(text, bad = false) {
  const c = $("connection");
  c.textContent = text;
  c.classList.toggle("bad", bad);
}

// ----- connecting and signing in -----------------------------------------

/** Drops the connection and everything shown from it. */
function teardown() {
  app.generation += 1;
  if (app.rpc) app.rpc.close();
  app.rpc = null;
  app.scope = null;
  app.runners.clear();
  app.history.clear();
  app.rates.clear();
  for (const row of app.rows.values()) row.tr.remove();
  app.rows.clear();
  app.log = { runner: "", sub: null, generation: app.log.generation + 1 };
  $("log").replaceChildren();
  $("log-status").textContent = "";
  $("script-output").textContent = "";
  $("script-meta").textContent = "";
  $("summary").textContent = "";
  $("runner-count").textContent = "";
  for (const select of document.querySelectorAll(".runner-select")) select.replaceChildren();
  $("chart-rate").replaceChildren();
  $("chart-queue").replaceChildren();
  $("chart-legend").replaceChildren();
  $("app").hidden = true;
  $("scope-badge").hidden = true;
  $("sign-out").hidden = true;
}

async function connect(secret) {
  teardown();
  const generation = app.generation;
  app.secret = secret;
  setConnection("connecting…");
  const rpc = new Rpc(secret, () => {
    if (generation !== app.generation) return;
    teardown();
    scheduleReconnect();
  });
  try {
    await rpc.open();
  } catch {
    if (generation === app.generation) scheduleReconnect();
    return;
  }
  if (generation !== app.generation) {
    rpc.close();
    return;
  }
  let who;
  try {
    who = await rpc.call("whoami");
  } catch (e) {
    rpc.close();
    if (e.code === UNAUTHORIZED) {
      sessionStorage.removeItem(SECRET_KEY);
      showLogin(secret ? "That secret was not accepted." : "");
    } else {
      setConnection(`error: ${e.message}`, true);
    }
    return;
  }
  if (generation !== app.generation) {
    rpc.close();
    return;
  }
  app.reconnectDelay = 1000;
  app.rpc = rpc;
  app.scope = who.scope;
  app.secretsConfigured = who.secrets_configured;
  if (secret) sessionStorage.setItem(SECRET_KEY, secret);
  showApp();
  pollRunners(generation);
  pollStatus(generation);
}

function scheduleReconnect() {
  const delay = app.reconnectDelay;
  app.reconnectDelay = Math.min(RECONNECT_MAX_MS, app.reconnectDelay * 2);
  setConnection(`disconnected; retrying in ${Math.round(delay / 1000)} s`, true);
  const generation = app.generation;
  setTimeout(() => {
    if (generation === app.generation) connect(app.secret);
  }, delay);
}

function showLogin(error) {
  setConnection("secret required");
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error;
  $("secret").value = "";
  $("secret").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  setConnection("connected");
  const badge = $("scope-badge");
  badge.hidden = false;
  badge.textContent = !app.secretsConfigured
    ? "no secrets: admin (loopback only)"
    : isAdmin()
      ? "admin"
      : "user: read-only";
  $("sign-out").hidden = !app.secretsConfigured;
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = !isAdmin();
}

// ----- runners table ------------------------------------------------------

async function pollRunners(generation) {
  while (generation === app.generation && app.rpc) {
    const started = performance.now();
    try {
      const list = await app.rpc.call("get_all_runner_status", {}, 30_000);
      if (generation !== app.generation) return;
      renderRunners(list);
    } catch (e) {
      if (generation !== app.generation) return;
      if (e.code) toast(`status: ${e.message}`, true);
    }
    await sleep(Math.max(100, POLL_MS - (performance.now() - started)));
  }
}

async function updateSummary(generation) {
  try {
    const s = await app.rpc.call("get_all_status", {}, 30_000);
    if (generation !== app.generation) return;
    const r = s.runners;
    $("summary").textContent =
      `v${s.version} · ${r.running || 0} of ${r.total || 0} running · Redis ${s.redis} · up ${fmtDuration(s.uptime_secs)} · ${s.default_manager} manager`;
  } catch {
    // The connection's state is shown apart; the next round tells.
  }
}

async function pollStatus(generation) {
  while (generation === app.generation && app.rpc) {
    await updateSummary(generation);
    await sleep(STATUS_MS);
  }
}

/** Refreshes now, outside the polling rhythm (after an action). */
async function refreshSoon() {
  if (!app.rpc) return;
  const generation = app.generation;
  try {
    const list = await app.rpc.call("get_all_runner_status", {}, 30_000);
    if (generation === app.generation) renderRunners(list);
  } catch {
    // The next poll tells.
  }
  updateSummary(generation);
}

function makeRow(name) {
  const cells = {};
  const tr = el("tr", { "data-runner": name });
  tr.append(el("th", { scope: "row", text: name }));
  const keyCode = el("code");
  const copy = el("button", { type: "button", class: "quiet small", "aria-label": `Copy the key of ${name}`, text: "copy" });
  copy.addEventListener("click", () => copyKey(name));
  tr.append(el("td", {}, el("span", { class: "key" }, keyCode, copy)));
  cells.key = keyCode;
  const state = el("span", { class: "state" });
  tr.append(el("td", {}, state));
  cells.state = state;
  for (const [field, cls] of [
    ["pid", "num"],
    ["uptime", "num"],
    ["restarts", "num"],
    ["exit", "exit"],
    ["queue", "num"],
    ["heartbeat", "num"],
    ["memory", "num"],
  ]) {
    const td = el("td", { class: cls, "data-field": field });
    tr.append(td);
    cells[field] = td;
  }
  const actions = el("td", { class: "actions admin-only" });
  cells.buttons = {};
  for (const [action, label] of [
    ["start", "Start"],
    ["stop", "Stop"],
    ["restart", "Restart"],
    ["remove", "Remove"],
  ]) {
    const b = el("button", {
      type: "button",
      class: action === "remove" ? "danger small" : "quiet small",
      "data-action": action,
      "aria-label": `${label} ${name}`,
      text: label,
    });
    b.addEventListener("click", () => runnerAction(name, action));
    actions.append(b);
    cells.buttons[action] = b;
  }
  tr.append(actions);
  return { tr, cells };
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function renderRunners(list) {
  const seen = new Set();
  const tbody = document.querySelector("#runners tbody");
  const now = Date.now();
  list.forEach((info, index) => {
    seen.add(info.name);
    app.runners.set(info.name, info);
    let row = app.rows.get(info.name);
    if (!row) {
      row = makeRow(info.name);
      app.rows.set(info.name, row);
    }
    // Keep the table in name order without rebuilding it (focus stays).
    if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
    const c = row.cells;
    row.tr.dataset.state = info.state;
    setText(c.key, shortKey(info.circle_public_key));
    c.key.title = info.circle_public_key;
    setText(c.state, info.state);
    c.state.className = `state state-${info.state}`;
    c.state.title = `target: ${info.target}`;
    setText(c.pid, info.pid === null ? "—" : String(info.pid));
    setText(c.uptime, fmtDuration(info.uptime_secs));
    setText(c.restarts, String(info.restarts));
    const exit = fmtExit(info);
    setText(c.exit, exit);
    c.exit.title = exit;
    setText(c.queue, info.queue_depth === null ? "—" : String(info.queue_depth));
    setText(c.heartbeat, heartbeatAge(info));
    setText(c.memory, fmtBytes(info.memory_rss_bytes));
    const busy = row.tr.classList.contains("busy");
    c.buttons.start.disabled = busy || info.state === "running" || info.state === "starting";
    c.buttons.stop.disabled = busy || info.state === "stopped";
    c.buttons.restart.disabled = busy;
    c.buttons.remove.disabled = busy;
    c.buttons.start.parentElement.hidden = !isAdmin();
    record(info, now);
  });
  for (const [name, row] of app.rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      app.rows.delete(name);
      app.runners.delete(name);
      app.history.delete(name);
      app.rates.delete(name);
    }
  }
  $("no-runners").hidden = list.length > 0;
  $("runner-count").textContent = `${list.length} runner${list.length === 1 ? "" : "s"}`;
  updateRunnerSelects(list.map((i) => i.name));
  drawCharts(now);
}

async function copyKey(name) {
  const info = app.runners.get(name);
  if (!info) return;
  try {
    await navigator.clipboard.writeText(info.circle_public_key);
    toast(`copied the key of ${name}`);
  } catch {
    toast(`cannot use the clipboard here; the key of ${name} is ${info.circle_public_key}`, true);
  }
}

const ACTIONS = {
  start: { method: "start_runner", ask: (n) => `Start runner ${n}?`, done: "started" },
  stop: {
    method: "stop_runner",
    ask: (n) => `Stop runner ${n}? Its worker finishes the task in hand and exits; it stays stopped.`,
    done: "stopped",
  },
  restart: { method: "restart_runner", ask: (n) => `Restart runner ${n}?`, done: "restarted" },
  remove: {
    method: "remove_runner",
    ask: (n) => `Remove runner ${n}? It is stopped and forgotten (its circle's database stays on disk).`,
    done: "removed",
  },
};

async function runnerAction(name, action) {
  const a = ACTIONS[action];
  if (!(await confirmDialog(a.ask(name), action === "remove" ? "Remove" : action[0].toUpperCase() + action.slice(1)))) return;
  const row = app.rows.get(name);
  if (row) row.tr.classList.add("busy");
  try {
    await app.rpc.call(a.method, { name });
    toast(`${name}: ${a.done}`);
  } catch (e) {
    toast(`${name}: ${e.message}`, true);
  } finally {
    if (row) row.tr.classList.remove("busy");
    refreshSoon();
  }
}

/** A modal question; resolves true for OK. Esc or Cancel is no. */
function confirmDialog(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("close", cancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", cancel);
    dialog.showModal();
    $("confirm-ok").focus();
  });
}

function updateRunnerSelects(names) {
  for (const select of document.querySelectorAll(".runner-select")) {
    const none = select.dataset.none;
    const wanted = none ? ["", ...names] : names;
    const have = [...select.options].map((o) => o.value);
    if (have.length === wanted.length && have.every((v, i) => v === wanted[i])) continue;
    const current = select.value;
    select.replaceChildren(...wanted.map((n) => el("option", { value: n, text: n || none })));
    if (wanted.includes(current)) select.value = current;
    else if (select.id === "log-runner" && app.log.runner) followLogs("");
  }
}

// ----- adding runners -----------------------------------------------------

async function generateKey() {
  $("add-error").textContent = "";
  try {
    const k = await app.rpc.call("generate_keypair");
    $("add-key").value = k.circle_public_key;
    toast(`new key; its secret is kept on the supervisor's host in ${k.secret_key_file}`);
  } catch (e) {
    $("add-error").textContent = e.message;
  }
}

async function addRunner(ev) {
  ev.preventDefault();
  $("add-error").textContent = "";
  const params = {
    name: $("add-name").value.trim(),
    circle_public_key: $("add-key").value.trim(),
    start: $("add-start").checked,
  };
  const init = $("add-init").value;
  if (init.trim()) params.init_script = init;
  $("add-submit").disabled = true;
  try {
    const info = await app.rpc.call("add_runner", params);
    toast(`${info.name}: added (${info.state})`);
    $("add-name").value = "";
    $("add-key").value = "";
    $("add-init").value = "";
    refreshSoon();
  } catch (e) {
    $("add-error").textContent = e.message;
  } finally {
    $("add-submit").disabled = false;
  }
}

// ----- scripts ------------------------------------------------------------

async function runScript(ev) {
  if (ev) ev.preventDefault();
  const runner = $("script-runner").value;
  const script = $("script-text").value;
  const timeout = Number($("script-timeout").value) || 30;
  const out = $("script-output");
  if (!runner) {
    out.textContent = "No runner to run it on.";
    out.classList.add("failed");
    return;
  }
  $("script-run").disabled = true;
  out.classList.remove("failed");
  out.dataset.status = "running";
  out.textContent = "";
  $("script-meta").textContent = `running on ${runner}…`;
  const started = performance.now();
  try {
    const r = await app.rpc.call("run_job", { runner, script, timeout_secs: timeout }, (timeout + 15) * 1000);
    const ms = Math.round(performance.now() - started);
    out.dataset.status = r.status;
    if (r.status === "completed") {
      out.textContent = r.output ?? "";
    } else {
      out.textContent = r.error ?? "failed";
      out.classList.add("failed");
    }
    $("script-meta").textContent = `${r.status} in ${ms} ms · job ${r.job_id}`;
  } catch (e) {
    const ms = Math.round(performance.now() - started);
    out.dataset.status = "error";
    out.textContent = e.message;
    out.classList.add("failed");
    $("script-meta").textContent = `refused after ${ms} ms${e.code ? ` (error ${e.code})` : ""}`;
  } finally {
    $("script-run").disabled = false;
  }
}

// ----- logs ---------------------------------------------------------------

function appendLog(lines) {
  const box = $("log");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
  for (const line of lines) {
    const cls = / (ERROR|error) /.test(line) ? "err" : / (WARN|warn) /.test(line) ? "warn" : null;
    box.append(el("div", { class: cls, text: line }));
  }
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

async function followLogs(name) {
  const generation = ++app.log.generation;
  if (app.log.sub !== null && app.rpc) app.rpc.unsubscribe("unsubscribe_runner_logs", app.log.sub);
  app.log.sub = null;
  app.log.runner = name;
  $("log").replaceChildren();
  $("log-runner").value = name;
  if (!name || !app.rpc) {
    $("log-status").textContent = "";
    return;
  }
  $("log-status").textContent = `connecting to ${name}…`;
  // Subscribe first, then read the tail, so no line falls between; lines
  // that came in while the tail was read are shown once.
  let early = [];
  let live = false;
  const rpc = app.rpc;
  try {
    const sub = await rpc.subscribe("subscribe_runner_logs", { name }, (line) => {
      if (generation !== app.log.generation) return;
      if (live) appendLog([line]);
      else early.push(line);
    });
    if (generation !== app.log.generation) {
      rpc.unsubscribe("unsubscribe_runner_logs", sub);
      return;
    }
    app.log.sub = sub;
    const tail = await rpc.call("get_runner_logs", { name, lines: TAIL_LINES });
    if (generation !== app.log.generation) return;
    const inTail = new Set(tail);
    appendLog(tail);
    appendLog(early.filter((l) => !inTail.has(l)));
    early = [];
    live = true;
    $("log-status").textContent = `following ${name}`;
  } catch (e) {
    if (generation === app.log.generation) $("log-status").textContent = `cannot follow ${name}: ${e.message}`;
  }
}

// ----- activity chart -----------------------------------------------------

/** Keeps a sample of the runner's task rate and queue depth. */
function record(info, now) {
  // Tasks done is the worker's own count, sent with its heartbeat: the rate
  // is its change between two heartbeats.
  let rate = app.rates.get(info.name) || { at: null, done: null, perSec: 0 };
  const at = info.heartbeat_at ? Date.parse(info.heartbeat_at) : null;
  if (at === null || info.tasks_done === null) {
    rate = { at: null, done: null, perSec: 0 };
  } else if (rate.at !== null && at > rate.at) {
    let delta = info.tasks_done - rate.done;
    if (delta < 0) delta = info.tasks_done; // a new worker process counts from 0
    rate = { at, done: info.tasks_done, perSec: delta / ((at - rate.at) / 1000) };
  } else if (rate.at === null) {
    rate = { at, done: info.tasks_done, perSec: 0 };
  }
  app.rates.set(info.name, rate);
  const samples = app.history.get(info.name) || [];
  samples.push({ t: now, rate: rate.perSec, queue: info.queue_depth ?? 0 });
  while (samples.length && samples[0].t < now - HISTORY_MS) samples.shift();
  app.history.set(info.name, samples);
}

/** The span the charts show: the last 5 minutes, or less while the page
 *  has seen less (at least one minute). */
function chartSpan(now) {
  let oldest = now;
  for (const samples of app.history.values()) if (samples.length) oldest = Math.min(oldest, samples[0].t);
  return Math.min(HISTORY_MS, Math.max(MIN_CHART_MS, now - oldest));
}

function drawChart(node, field, now, span) {
  const W = 600;
  const H = 120;
  const PAD = 14;
  let max = 1;
  for (const samples of app.history.values()) for (const s of samples) max = Math.max(max, s[field]);
  const nice = max <= 1 ? 1 : max <= 5 ? 5 : Math.ceil(max / 10) * 10;
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    const y = PAD + (H - 2 * PAD) * (1 - f);
    parts.push(svg("line", { x1: 0, x2: W, y1: y, y2: y, class: "grid-line" }));
  }
  parts.push(svg("text", { x: 4, y: PAD - 3, class: "axis-label", text: field === "rate" ? `${nice}/s` : String(nice) }));
  parts.push(svg("text", { x: W - 30, y: H - 2, class: "axis-label", text: "now" }));
  const spanText = span >= 60_000 ? `−${Math.round(span / 60_000)} min` : `−${Math.round(span / 1000)} s`;
  parts.push(svg("text", { x: 4, y: H - 2, class: "axis-label", text: spanText }));
  [...app.history.keys()].sort().forEach((name, i) => {
    const samples = app.history.get(name);
    if (samples.length < 2) return;
    const points = samples
      .map((s) => {
        const x = Math.max(0, W * (1 - (now - s.t) / span));
        const y = PAD + (H - 2 * PAD) * (1 - Math.min(s[field], nice) / nice);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(" ");
    parts.push(svg("polyline", { points, class: `series-${i % 8}`, "data-runner": name }));
  });
  node.replaceChildren(...parts);
}

function drawCharts(now) {
  const span = chartSpan(now);
  drawChart($("chart-rate"), "rate", now, span);
  drawChart($("chart-queue"), "queue", now, span);
  const names = [...app.history.keys()].sort();
  const legend = $("chart-legend");
  const have = [...legend.children].map((li) => li.dataset.runner);
  if (have.length === names.length && have.every((n, i) => n === names[i])) return;
  legend.replaceChildren(
    ...names.map((name, i) =>
      el("li", { "data-runner": name }, el("span", { class: `swatch series-${i % 8}` }), name),
    ),
  );
}

// ----- wiring -------------------------------------------------------------

function bindUi() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const secret = $("secret").value.trim();
    if (secret) connect(secret);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(SECRET_KEY);
    connect(null);
  });
  $("script-form").addEventListener("submit", runScript);
  $("script-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) runScript(ev);
  });
  $("log-runner").addEventListener("change", (ev) => followLogs(ev.target.value));
  $("log-clear").addEventListener("click", () => $("log").replaceChildren());
  $("add-form").addEventListener("submit", addRunner);
  $("add-generate").addEventListener("click", generateKey);
  window.addEventListener("pagehide", () => {
    app.generation += 1;
    if (app.rpc) app.rpc.close();
  });
}

bindUi();
connect(sessionStorage.getItem(SECRET_KEY));
