// Shared by the page's panels: requests and tokens, DOM and SVG helpers, the event stream.
// The stream is read with fetch() (not EventSource) so it can send Authorization and Last-Event-ID.

export const $ = (id) => document.getElementById(id);
export const STREAM_ROWS = 500;
export const FLEET_PAGE = 50;
export const READ_TOKEN = "autocore.readToken";
export const WRITE_TOKEN = "autocore.apiToken";

// ---- tokens and requests ---------------------------------------------------------------------

export function askToken(why, key) {
  const dialog = $("token-dialog");
  $("tk-why").textContent = why;
  $("tk-value").value = sessionStorage.getItem(key) || "";
  return new Promise((resolve) => {
    dialog.onclose = () => {
      const value = $("tk-value").value.trim();
      if (dialog.returnValue === "ok" && value) {
        sessionStorage.setItem(key, value);
        resolve(value);
      } else {
        resolve(null);
      }
    };
    dialog.showModal();
  });
}

export function authHeaders(key = READ_TOKEN) {
  const token = sessionStorage.getItem(key);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (resp.status === 401 && !options.retried) {
    if (await askToken("This service wants its read token (API_READ_TOKEN).", READ_TOKEN)) {
      return api(path, { ...options, retried: true });
    }
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch { /* not JSON */ }
    throw new Error(`${resp.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return resp.json();
}

// ---- small helpers ---------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export function ago(ms) {
  if (ms == null || Number.isNaN(ms)) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

// Runs fn once, `ms` from the first call; calls meanwhile join it (steady traffic cannot starve it).
const pending = new Set();
export function once(key, ms, fn) {
  if (pending.has(key)) return;
  pending.add(key);
  setTimeout(() => { pending.delete(key); fn(); }, ms);
}

export const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
export const fmt = (v, digits = 1) => (v == null ? "–" : Number(v).toFixed(digits));

// MQTT filter -> RegExp (+ one level, # the rest), as the server does.
export function topicMatcher(filter) {
  if (!filter) return null;
  const levels = filter.split("/");
  const parts = [];
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level === "#") {
      if (i !== levels.length - 1) return { error: "'#' must be the last level" };
      return new RegExp(`^${parts.join("/")}${parts.length ? "(?:/.*)?" : ".*"}$`, "s");
    }
    if (level === "+") parts.push("[^/]*");
    else if (level.includes("+") || level.includes("#")) return { error: "'+' and '#' fill a whole level" };
    else parts.push(level.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  }
  return new RegExp(`^${parts.join("/")}$`, "s");
}

// ---- the event stream ------------------------------------------------------------------------

const listeners = {};
export const tickers = [];
export function on(kind, fn) { (listeners[kind] ||= []).push(fn); }
export function onTick(fn) { tickers.push(fn); }
export function emit(kind, data, id) { for (const fn of listeners[kind] || []) fn(data, id); }

export const stream = {
  lastId: null,
  heartbeat: 15,
  connected: false,
  lastByte: 0,
  retry: 1000,
  controller: null,

  async connect() {
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    let resp;
    try {
      resp = await fetch("/events", { headers, signal: this.controller.signal, cache: "no-store" });
    } catch (err) {
      return this.lost(`cannot reach the service (${err.message})`);
    }
    if (resp.status === 401) {
      const token = await askToken("The live stream wants the read token (API_READ_TOKEN).", READ_TOKEN);
      return token ? this.connect() : this.lost("no read token");
    }
    if (!resp.ok || !resp.body) return this.lost(`the service answered ${resp.status}`);
    this.up();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.lastByte = Date.now();
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          this.dispatch(block);
        }
      }
      this.lost("the service closed the stream");
    } catch (err) {
      this.lost(err.name === "AbortError" ? "no heartbeat from the service" : `stream broke (${err.message})`);
    }
  },

  dispatch(block) {
    let kind = "message";
    let id = null;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue; // comment: a heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    }
    if (id) this.lastId = id;
    if (!data.length) return;
    let parsed;
    try { parsed = JSON.parse(data.join("\n")); } catch { return; }
    if (kind === "hello") this.heartbeat = parsed.heartbeat || this.heartbeat;
    emit(kind, parsed, id);
  },

  up() {
    this.connected = true;
    this.lastByte = Date.now();
    this.failures = 0;
    emit("connection", { connected: true });
  },

  lost(why) {
    const wasUp = this.connected;
    this.connected = false;
    this.failures = (this.failures || 0) + 1;
    const delay = Math.min(10000, this.retry * 2 ** Math.min(this.failures - 1, 3));
    this.nextTry = Date.now() + delay;
    emit("connection", { connected: false, why, wasUp });
    setTimeout(() => this.connect(), delay);
  },

  watchdog() {
    // Proxies and half-open connections can leave a stream silent without an error.
    if (this.connected && Date.now() - this.lastByte > (this.heartbeat * 2 + 5) * 1000) this.controller.abort();
  },
};
onTick(() => stream.watchdog());


export function showPayload(pre, text, truncated = false, error = null) {
  let shown = text == null ? "(not UTF-8 text)" : text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* as received */ }
  pre.textContent = (error ? `error: ${error}\n\n` : "") + shown + (truncated ? "\n… (truncated)" : "");
  pre.hidden = false;
}

