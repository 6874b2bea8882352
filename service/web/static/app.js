// AutoCore Monitor page: plain modern JS, no build step, no other host than the service.
// Data: the REST API for snapshots, /events (Server-Sent Events, read with fetch so that the
// Authorization and Last-Event-ID headers can be sent) for what changes.
//
// Panels subscribe to the stream with `on(kind, fn)` and to the clock with `onTick(fn)`: adding
// a panel (alerts, say) is a section in index.html plus one more `panels.push(...)` below.

const $ = (id) => document.getElementById(id);
const STREAM_ROWS = 500;
const FLEET_PAGE = 50;
const READ_TOKEN = "autocore.readToken";
const WRITE_TOKEN = "autocore.apiToken";

// ---- tokens and requests ---------------------------------------------------------------------

function askToken(why, key) {
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

function authHeaders(key = READ_TOKEN) {
  const token = sessionStorage.getItem(key);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
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

function el(tag, attrs = {}, ...children) {
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
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function ago(ms) {
  if (ms == null || Number.isNaN(ms)) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

// Runs fn once, `ms` from the first call; calls meanwhile join it (steady traffic cannot starve it).
const pending = new Set();
function once(key, ms, fn) {
  if (pending.has(key)) return;
  pending.add(key);
  setTimeout(() => { pending.delete(key); fn(); }, ms);
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const fmt = (v, digits = 1) => (v == null ? "–" : Number(v).toFixed(digits));

// MQTT filter -> RegExp (+ one level, # the rest), as the server does.
function topicMatcher(filter) {
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
const tickers = [];
function on(kind, fn) { (listeners[kind] ||= []).push(fn); }
function onTick(fn) { tickers.push(fn); }
function emit(kind, data, id) { for (const fn of listeners[kind] || []) fn(data, id); }

const stream = {
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

// ---- health bar ------------------------------------------------------------------------------

const healthBar = {
  async start() {
    on("health", (h) => this.show(h));
    on("connection", (c) => this.connection(c));
    onTick(() => this.tick());
    try {
      const resp = await fetch("/health/mqtt-monitor", { headers: authHeaders() });
      if (resp.status !== 401) this.show(await resp.json());
    } catch { /* the stream says so */ }
  },
  show(h) {
    const status = $("status");
    status.textContent = h.status;
    status.className = `chip ${{ healthy: "good", degraded: "warn" }[h.status] || "bad"}`;
    const yes = (ok, good = "ok", bad = "down") => (ok ? good : bad);
    $("h-broker").textContent = h.monitor_enabled ? yes(h.broker_connected, "connected", "disconnected") : "off";
    $("h-subs").textContent = yes(h.subscriptions_granted, "granted", "missing");
    $("h-db").textContent = yes(h.database_ok);
    $("h-backlog").textContent = h.writer_backlog ?? h.messages_in_flight ?? "?";
    $("h-rate").textContent = h.messages_per_second ?? "–";
    $("h-reasons").textContent = (h.reasons || []).join("; ");
  },
  connection(c) {
    this.state = c;
    $("healthbar").classList.toggle("lost", !c.connected);
    if (!c.connected) {
      // What the bar showed is no longer known to be true.
      $("status").textContent = "status unknown";
      $("status").className = "chip";
    }
    this.tick();
  },
  tick() {
    const c = this.state;
    const conn = $("conn");
    if (!c) return;
    if (c.connected) {
      conn.textContent = "live";
      conn.className = "chip good";
    } else {
      const wait = Math.max(0, Math.ceil((stream.nextTry - Date.now()) / 1000));
      conn.textContent = `connection to the service lost: ${c.why}; retrying in ${wait}s`;
      conn.className = "chip bad";
    }
  },
};

// ---- fleet -----------------------------------------------------------------------------------

const fleet = {
  offset: 0,
  total: 0,
  rows: new Map(), // device_id -> {data, tr, cells, trend: [], relays: Map}
  known: new Set(), // every device id this page has seen (shown or in the stream)
  reloadTimer: null,

  start() {
    $("f-q").addEventListener("input", () => this.schedule(250, true));
    $("f-state").addEventListener("change", () => this.schedule(0, true));
    $("p-prev").addEventListener("click", () => { this.offset = Math.max(0, this.offset - FLEET_PAGE); this.load(); });
    $("p-next").addEventListener("click", () => {
      if (this.offset + FLEET_PAGE < this.total) { this.offset += FLEET_PAGE; this.load(); }
    });
    on("device", (d) => this.device(d));
    on("message", (m) => this.message(m));
    on("connection", (c) => { if (c.connected) this.schedule(0); });
    onTick(() => this.tick());
    this.load();
  },

  schedule(ms, reset = false) {
    if (reset) this.offset = 0;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.load(), ms);
  },

  async counts() {
    const [all, online, offline] = await Promise.all(
      ["", "&online=true", "&online=false"].map((q) => api(`/devices?limit=1${q}`)),
    );
    $("c-online").textContent = online.total;
    $("c-offline").textContent = offline.total;
    $("c-unknown").textContent = all.total - online.total - offline.total;
  },

  async load() {
    const q = $("f-q").value.trim();
    const state = $("f-state").value;
    const params = new URLSearchParams({ limit: FLEET_PAGE, offset: this.offset });
    if (q) params.set("q", q);
    if (state === "online") params.set("online", "true");
    if (state === "offline") params.set("online", "false");
    let page;
    try {
      [page] = await Promise.all([api(`/devices?${params}`), this.counts()]);
    } catch (err) {
      $("p-info").textContent = `could not load devices: ${err.message}`;
      return;
    }
    // "unknown" (never sent a status) is no API filter: it narrows the page shown.
    const items = state === "unknown" ? page.items.filter((d) => d.is_online == null) : page.items;
    this.total = page.total;
    const body = $("fleet-rows");
    const old = this.rows;
    this.rows = new Map();
    body.replaceChildren();
    for (const d of page.items) this.known.add(d.device_id);
    for (const d of items) {
      const row = old.get(d.device_id) || this.makeRow(d.device_id);
      row.data = { ...row.data, ...d };
      this.rows.set(d.device_id, row);
      body.append(row.tr);
      this.render(row);
      if (!row.detailLoaded) this.enrich(row);
    }
    const last = Math.min(page.total, this.offset + page.items.length);
    $("p-info").textContent = page.total ? `${this.offset + 1}–${last} of ${page.total}` : "no devices yet";
  },

  makeRow(id) {
    const cells = {};
    const tr = el("tr", { "data-device": id, onclick: () => detail.open(id) });
    for (const name of ["dot", "id", "seen", "fw", "ip", "tele", "trend", "relays"]) {
      cells[name] = el("td");
      tr.append(cells[name]);
    }
    cells.dot.append(el("span", { class: "dot" }));
    cells.id.textContent = id;
    cells.relays.className = "relays";
    return { id, tr, cells, data: {}, trend: [], relays: new Map(), latest: null, detailLoaded: false };
  },

  async enrich(row) {
    // Latest telemetry, relays and a 30-minute trend for the rows on screen (a few at a time).
    row.detailLoaded = true;
    const id = encodeURIComponent(row.id);
    const from = new Date(Date.now() - 30 * 60 * 1000).toISOString();
    try {
      const [info, buckets] = await Promise.all([
        api(`/devices/${id}`),
        api(`/devices/${id}/telemetry?bucket=1m&limit=30&from=${encodeURIComponent(from)}`),
      ]);
      row.latest = info.latest_telemetry || row.latest;
      for (const r of info.relays) row.relays.set(r.relay_index, r.state);
      const past = buckets.items.map((b) => b.metrics.temperature.avg).filter((v) => v != null);
      row.trend = [...past, ...row.trend].slice(-60);
      this.render(row);
    } catch {
      row.detailLoaded = false; // try again on the next load
    }
  },

  render(row) {
    const d = row.data;
    const state = d.is_online == null ? "unk" : d.is_online ? "on" : "off";
    row.cells.dot.firstChild.className = `dot ${state}`;
    row.tr.dataset.state = { on: "online", off: "offline", unk: "unknown" }[state];
    row.cells.fw.textContent = d.firmware_version || "–";
    row.cells.ip.textContent = d.ip_address || "–";
    const t = row.latest;
    row.cells.tele.textContent = t ? `${fmt(t.temperature)} °C  ${fmt(t.humidity, 0)} %  ${fmt(t.voltage, 2)} V` : "–";
    row.cells.trend.replaceChildren(sparkline(row.trend));
    row.cells.relays.replaceChildren(
      ...[...row.relays.entries()].sort((a, b) => a[0] - b[0])
        .map(([i, s]) => el("span", { class: s ? "on" : "", title: `relay ${i}: ${s ? "on" : "off"}`, text: i })),
    );
    this.tickRow(row);
  },

  tickRow(row) {
    row.cells.seen.textContent = ago(row.data.last_seen ? Date.parse(row.data.last_seen) : null);
  },

  tick() { for (const row of this.rows.values()) this.tickRow(row); },

  device(d) {
    const row = this.rows.get(d.device_id);
    if (!row) { this.countsSoon(); return this.unseen(d.device_id); }
    row.data.is_online = d.is_online;
    if (d.ip_address) row.data.ip_address = d.ip_address;
    if (d.firmware_version) row.data.firmware_version = d.firmware_version;
    this.render(row);
    this.countsSoon();
  },

  countsSoon() { once("counts", 1000, () => this.counts().catch(() => {})); },

  unseen(id) {
    // A device this page has not shown: new, or on another page. Counts and pages may change.
    if (this.known.has(id)) return;
    this.known.add(id);
    once("fleet", 1500, () => this.load());
  },

  message(m) {
    if (!m.device_id || m.outcome !== "stored") return;
    const row = this.rows.get(m.device_id);
    if (!row) return this.unseen(m.device_id);
    row.data.last_seen = new Date(m.t * 1000).toISOString();
    let payload = null;
    try { payload = JSON.parse(m.payload); } catch { /* not JSON: nothing to show */ }
    if (payload && m.route === "telemetry") {
      row.latest = payload;
      if (payload.temperature != null) row.trend = [...row.trend, payload.temperature].slice(-60);
      this.render(row);
    } else if (payload && m.route === "relay") {
      const index = Number(m.topic.split("/").at(-2));
      row.relays.set(index, Boolean(payload.state));
      this.render(row);
    } else {
      this.tickRow(row);
    }
  },
};

function sparkline(values) {
  const box = svg("svg", { class: "spark", viewBox: "0 0 90 20", preserveAspectRatio: "none" });
  if (values.length < 2) return box;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => `${(i / (values.length - 1)) * 90},${19 - ((v - lo) / span) * 18}`);
  box.append(svg("polyline", { points: points.join(" ") }));
  return box;
}

// ---- device detail ---------------------------------------------------------------------------

const RANGE_BUCKET = { 900: "10s", 3600: "1m", 21600: "5m", 86400: "15m", 604800: "1h" };

const detail = {
  id: null,
  start() {
    $("dt-close").addEventListener("click", () => this.close());
    $("dt-range").addEventListener("change", () => this.load());
    $("detail").addEventListener("click", (e) => { if (e.target.id === "detail") this.close(); });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") this.close(); });
    on("device", (d) => { if (d.device_id === this.id) this.load(); });
  },
  open(id) {
    this.id = id;
    $("detail").hidden = false;
    $("dt-title").textContent = id;
    this.load();
  },
  close() { this.id = null; $("detail").hidden = true; },

  async load() {
    const id = this.id;
    if (!id) return;
    const seconds = Number($("dt-range").value);
    const end = new Date();
    const start = new Date(end - seconds * 1000);
    const range = `from=${encodeURIComponent(start.toISOString())}&to=${encodeURIComponent(end.toISOString())}`;
    const path = `/devices/${encodeURIComponent(id)}`;
    let info, tele, conn;
    try {
      [info, tele, conn] = await Promise.all([
        api(path),
        api(`${path}/telemetry?bucket=${RANGE_BUCKET[seconds]}&limit=1000&${range}`),
        api(`${path}/connectivity?limit=1000&${range}`),
      ]);
    } catch (err) {
      $("dt-facts").textContent = `could not load: ${err.message}`;
      return;
    }
    if (id !== this.id) return;
    const state = $("dt-state");
    state.textContent = info.is_online == null ? "unknown" : info.is_online ? "online" : "offline";
    state.className = `chip ${info.is_online == null ? "" : info.is_online ? "good" : "bad"}`;
    const fact = (k, v) => el("span", {}, `${k} `, el("b", { text: v ?? "–" }));
    $("dt-facts").replaceChildren(
      fact("firmware", info.firmware_version), fact("IP", info.ip_address),
      fact("uptime", info.uptime != null ? `${info.uptime}s` : null),
      fact("first seen", new Date(info.first_seen).toLocaleString()),
      fact("last seen", ago(Date.parse(info.last_seen))),
    );
    const charts = $("dt-charts");
    charts.replaceChildren(
      ...["temperature", "humidity", "voltage", "memory_free"].map((m) => chart(m, tele.items, start, end)),
    );
    $("dt-timeline").replaceChildren(timeline(conn, start, end, info));
    charts.dataset.range = String(seconds);
    this.relays(info.relays, range);
  },

  async relays(relays, range) {
    const box = $("dt-relays");
    if (!relays.length) { box.textContent = "no relay reported"; return; }
    const table = el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ...["relay", "state", "by", "since", "changes in range"].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    table.append(body);
    box.replaceChildren(table);
    for (const r of relays) {
      const history = await api(`/devices/${encodeURIComponent(this.id)}/relays/${r.relay_index}/history?limit=50&${range}`)
        .catch(() => []);
      const changes = history.slice(-8).map((h) => `${clock(Date.parse(h.ts))} ${h.state ? "on" : "off"}`).join(", ");
      body.append(el("tr", {},
        el("td", { text: r.relay_index }), el("td", { text: r.state ? "on" : "off" }),
        el("td", { text: r.triggered_by || "–" }), el("td", { text: new Date(r.ts).toLocaleString() }),
        el("td", { text: `${history.length}${history.length ? ": " : ""}${changes}` })));
    }
  },
};

function chart(metric, buckets, start, end) {
  const W = 400, H = 140, L = 38, B = 16;
  const box = el("div", { class: "chart", "data-metric": metric });
  box.append(el("div", { class: "title", text: metric.replace("_", " ") }));
  const points = buckets.map((b) => ({ t: Date.parse(b.start), ...b.metrics[metric] })).filter((p) => p.avg != null);
  const area = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  box.append(area);
  area.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  if (!points.length) {
    const t = svg("text", { x: L + 10, y: H / 2 });
    t.textContent = "no data in this range";
    area.append(t);
    return box;
  }
  const lo = Math.min(...points.map((p) => p.min));
  const hi = Math.max(...points.map((p) => p.max));
  const span = hi - lo || 1;
  const x = (t) => L + ((t - start) / (end - start)) * (W - L);
  const y = (v) => 4 + (1 - (v - lo) / span) * (H - B - 8);
  const upper = points.map((p) => `${x(p.t)},${y(p.max)}`);
  const lower = points.map((p) => `${x(p.t)},${y(p.min)}`).reverse();
  area.append(svg("path", { class: "band", d: `M${upper.join("L")}L${lower.join("L")}Z` }));
  area.append(svg("polyline", { points: points.map((p) => `${x(p.t)},${y(p.avg)}`).join(" ") }));
  if (points.length < 40) for (const p of points) area.append(svg("circle", { cx: x(p.t), cy: y(p.avg), r: 2.5 }));
  for (const [v, yy] of [[hi, 12], [lo, H - B - 2]]) {
    const t = svg("text", { x: 2, y: yy });
    t.textContent = fmt(v, Math.abs(v) >= 100 ? 0 : span < 1 ? 3 : 1);
    area.append(t);
  }
  for (const [t, anchor] of [[start, "start"], [end, "end"]]) {
    const label = svg("text", { x: t === start ? L : W - 2, y: H - 3, "text-anchor": anchor });
    const day = new Date(t).toLocaleDateString([], { month: "short", day: "numeric" });
    label.textContent = end - start > 6 * 3600 * 1000 ? `${day} ${clock(t).slice(0, 5)}` : clock(t);
    area.append(label);
  }
  return box;
}

function timeline(changes, start, end, info) {
  // Segments between online/offline changes; before the first change in range the state is unknown.
  const W = 1000;
  const area = svg("svg", { class: "timeline", viewBox: `0 0 ${W} 26`, preserveAspectRatio: "none" });
  const x = (t) => ((t - start) / (end - start)) * W;
  let t0 = +start;
  let state = "unk";
  const segments = [];
  for (const c of changes) {
    const t = Date.parse(c.ts);
    segments.push([t0, t, state]);
    t0 = t;
    state = c.is_online ? "on" : "off";
  }
  if (!changes.length && info.is_online != null) state = info.is_online ? "on" : "off";
  segments.push([t0, +end, state]);
  for (const [a, b, s] of segments) {
    if (b <= a) continue;
    const rect = svg("rect", { class: s, x: x(a), y: 3, width: Math.max(1, x(b) - x(a)), height: 20 });
    const title = svg("title");
    title.textContent = `${s === "on" ? "online" : s === "off" ? "offline" : "unknown"} ${clock(a)} – ${clock(b)}`;
    rect.append(title);
    area.append(rect);
  }
  return area;
}

// ---- live stream -----------------------------------------------------------------------------

const live = {
  items: [], // newest last, at most STREAM_ROWS
  paused: false,
  held: 0,
  matcher: null,

  start() {
    for (const id of ["s-topic", "s-device", "s-outcome"]) $(id).addEventListener("input", () => this.refilter());
    $("s-pause").addEventListener("click", () => this.toggle());
    on("message", (m, id) => this.add({ ...m, id }));
    on("missed", (m) => this.add({ notice: this.noticeText(m), t: Date.now() / 1000 }));
    on("connection", (c) => { if (!c.connected && c.wasUp) this.add({ notice: `stream lost: ${c.why}`, t: Date.now() / 1000 }); });
  },

  noticeText(m) {
    const n = m.count == null ? "an unknown number of" : m.count;
    const why = {
      slow_client: "this page fell behind",
      rate_limit: "over EVENTS_MAX_RATE (not shown; all were committed)",
      beyond_resume_buffer: "older than the service keeps for a reconnect",
      stream_restarted: "the service restarted, or nobody listened for a while",
      hub_behind: "the service's event hub fell behind",
    }[m.reason] || m.reason;
    return `missed ${n} events: ${why}`;
  },

  toggle() {
    this.paused = !this.paused;
    $("s-pause").textContent = this.paused ? "resume" : "pause";
    if (!this.paused) { this.held = 0; this.render(); }
    this.info();
  },

  add(item) {
    this.items.push(item);
    if (this.items.length > STREAM_ROWS) this.items.shift();
    if (this.paused) { this.held++; this.info(); return; }
    if (!this.matches(item)) return;
    const body = $("stream-rows");
    body.prepend(this.row(item));
    while (body.childElementCount > STREAM_ROWS) body.lastElementChild.remove();
    this.info();
  },

  matches(m) {
    if (m.notice) return true;
    const device = $("s-device").value.trim();
    const outcome = $("s-outcome").value;
    if (device && m.device_id !== device) return false;
    if (outcome && m.outcome !== outcome) return false;
    return !this.matcher || this.matcher.error ? true : this.matcher.test(m.topic);
  },

  refilter() {
    this.matcher = topicMatcher($("s-topic").value.trim());
    $("s-topic").setCustomValidity(this.matcher && this.matcher.error ? this.matcher.error : "");
    this.render();
  },

  render() {
    const rows = this.items.filter((m) => this.matches(m)).reverse().map((m) => this.row(m));
    $("stream-rows").replaceChildren(...rows);
    this.info();
  },

  info() {
    const shown = $("stream-rows").childElementCount;
    $("s-info").textContent = `${shown} shown` + (this.paused ? `, paused (${this.held} new)` : "");
  },

  row(m) {
    if (m.notice) return el("tr", { class: "notice" }, el("td", { text: clock(m.t * 1000) }), el("td", { colspan: 4, text: m.notice }));
    const outcome = m.outcome === "dead_letter" ? `dead letter (${m.stage})` : "stored";
    const tr = el("tr", { "data-topic": m.topic, "data-outcome": m.outcome },
      el("td", { text: clock(m.t * 1000) }), el("td", { text: m.topic, title: m.topic }),
      el("td", { text: m.route || "–" }), el("td", { text: m.device_id || "–" }),
      el("td", { class: `outcome-${m.outcome}`, text: outcome, title: m.error || "" }));
    tr.addEventListener("click", () => {
      for (const s of document.querySelectorAll("#stream-rows tr.sel")) s.classList.remove("sel");
      tr.classList.add("sel");
      showPayload($("s-payload"), m.payload, m.truncated, m.error);
    });
    return tr;
  },
};

function showPayload(pre, text, truncated = false, error = null) {
  let shown = text == null ? "(not UTF-8 text)" : text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* as received */ }
  pre.textContent = (error ? `error: ${error}\n\n` : "") + shown + (truncated ? "\n… (truncated)" : "");
  pre.hidden = false;
}

// ---- dead letters ----------------------------------------------------------------------------

const dead = {
  start() {
    $("d-refresh").addEventListener("click", () => this.load());
    on("message", (m) => { if (m.outcome === "dead_letter") this.soon(); });
    on("connection", (c) => { if (c.connected) this.soon(); });
    this.load();
  },
  soon() { once("dead", 1000, () => this.load()); },

  async load() {
    let page;
    try {
      // Newest 50 open ones: the API lists oldest first, so count first, then read the tail.
      const count = await api("/dead-letters?resolved=false&limit=1");
      page = await api(`/dead-letters?resolved=false&limit=50&offset=${Math.max(0, count.total - 50)}`);
    } catch (err) {
      $("d-info").textContent = `could not load: ${err.message}`;
      return;
    }
    $("d-info").textContent = `${page.total} open`;
    $("dead-rows").replaceChildren(...page.items.reverse().map((d) => this.row(d)));
  },

  row(d) {
    const button = el("button", { type: "button", text: "replay", "data-replay": d.id });
    button.addEventListener("click", (e) => { e.stopPropagation(); this.replay(d, button); });
    const tr = el("tr", { "data-id": d.id },
      el("td", { text: d.id }), el("td", { text: new Date(d.received_at).toLocaleTimeString([], { hour12: false }) }),
      el("td", { text: d.topic, title: d.topic }), el("td", { text: d.stage }),
      el("td", { text: d.last_replay_error || d.error_message, title: d.error_message }), el("td", {}, button));
    tr.addEventListener("click", () => showPayload($("d-payload"), d.payload_text, false, d.error_message));
    return tr;
  },

  async replay(d, button) {
    let token = sessionStorage.getItem(WRITE_TOKEN);
    if (!token) token = await askToken(`Replaying dead letter ${d.id} needs the API token (API_TOKEN).`, WRITE_TOKEN);
    if (!token) return;
    button.disabled = true;
    button.textContent = "…";
    try {
      const resp = await fetch(`/dead-letters/${d.id}/replay`, { method: "POST", headers: authHeaders(WRITE_TOKEN) });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 401) {
        sessionStorage.removeItem(WRITE_TOKEN);
        button.textContent = "wrong token";
      } else if (!resp.ok) {
        button.textContent = `${resp.status}: ${body.detail || "failed"}`;
      } else {
        button.textContent = body.resolved ? "stored" : "refused again";
        button.title = body.resolved ? "" : `${body.stage}: ${body.error}`;
        if (body.resolved) setTimeout(() => this.load(), 1200);
      }
    } catch (err) {
      button.textContent = `failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  },
};

// ---- start -----------------------------------------------------------------------------------

const panels = [healthBar, fleet, detail, live, dead];

$("token-btn").addEventListener("click", async () => {
  if (await askToken("Read token (API_READ_TOKEN), if the service has one.", READ_TOKEN)) {
    stream.controller?.abort();
    fleet.load();
    dead.load();
  }
});
for (const panel of panels) panel.start();
setInterval(() => { for (const fn of tickers) fn(); }, 1000);
stream.connect();
